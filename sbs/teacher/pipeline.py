"""The teacher stage: examples -> prompts -> teacher (Ray Data) -> parse -> vote/filter -> Parquet.

Streaming and resumable. The input is cut into deterministic shards (`shards.py`); Ray Data
loads each uncommitted shard in a task, renders k prompt rows per example, runs the backend and
parses every sample in a task; the driver only buffers the shards in flight, votes per example
when all of a shard's samples are in, and commits the shard atomically. Failed teacher blocks
(a dead actor after its retries) are dropped by Ray Data (`max_errored_blocks=-1`); the driver
sees which samples never came back and reruns them one row per block, so a row that kills the
actor every time is rejected as `teacher_crashed` instead of taking the whole job down.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from sbs.datasets import Example, TaskDataset, get_dataset
from sbs.datasets.base import TaskDataset as _Base, data_dir
from sbs.teacher import judge
from sbs.teacher.backends.base import TeacherBackend, make_backend
from sbs.teacher.config import TeacherConfig
from sbs.teacher.prompts import Renderer, default_stop, load_prompt
from sbs.teacher.shards import InputSource, Ledger, Shard, parquet_rows, plan_shards, read_rows

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("sample", pa.int64()), ("shard", pa.int64()), ("shard_expected", pa.int64()),
    ("shard_exemplars", pa.string()), ("prompt", pa.string()), ("messages", pa.string()), ("input", pa.string()),
    ("gold", pa.string()), ("fields", pa.string()), ("teacher", pa.string())])


# ---- input --------------------------------------------------------------------------------------
def resolve_source(cfg: TeacherConfig, ds: TaskDataset, out: Path) -> InputSource:
    """Shipped/file inputs are read in place, shard by shard. Hub and generic datasets are
    snapshotted once into `<out>/_input/examples.parquet` (so a resume reads the same rows)."""
    has_shipped_layout = type(ds)._from_shipped is not _Base._from_shipped
    if cfg.source == "file":
        p = Path(cfg.input_path or "")
        if not p.is_file():
            raise FileNotFoundError(f"input_path: {p} not found")
        return InputSource(str(p.resolve()), "shipped" if has_shipped_layout else "examples", parquet_rows(p),
                           str(cfg.input_path))
    if cfg.source == "shipped" and has_shipped_layout:
        if cfg.split not in ds.splits():
            ds.load(cfg.split)  # raises SplitUnavailable with the dataset's own hint
        p = data_dir() / ds.name / f"{cfg.split}.parquet"
        return InputSource(str(p), "shipped", parquet_rows(p), f"sbs/data/{ds.name}/{cfg.split}.parquet")
    snap = out / "_input" / "examples.parquet"
    if not snap.is_file():
        mirror = cfg.hub_data_files.get(cfg.split) if cfg.source == "hub" else None
        exs = ds.load(cfg.split, source=cfg.source, limit=cfg.limit, **({"data_files": mirror} if mirror else {}))
        snap.parent.mkdir(parents=True, exist_ok=True)
        tmp = snap.with_name(".examples.parquet.tmp")
        pq.write_table(pa.Table.from_pylist([{"id": e.id, "input": e.input, "label": e.label, "fields": json.dumps(
            e.fields, ensure_ascii=False), "teacher": e.teacher} for e in exs]), tmp)
        tmp.replace(snap)
    return InputSource(str(snap), "examples", parquet_rows(snap), "<out>/_input/examples.parquet")


@dataclass
class ShardLoader:
    """Ray Data UDF: one shard descriptor row -> k prompt rows per (non-exemplar) example."""
    ds: TaskDataset
    source: InputSource
    renderer: Renderer
    chat: bool
    k: int

    def examples(self, start: int, stop: int) -> list[Example]:
        rows = read_rows(self.source.path, start, stop).to_pylist()
        if self.source.fmt == "shipped":
            return [self.ds._from_shipped(r) for r in rows]
        return [Example(r["id"], r["input"], r["label"], json.loads(r["fields"] or "{}"), r.get("teacher"))
                for r in rows]

    def rows(self, shard: int, start: int, stop: int) -> list[dict[str, Any]]:
        exs = self.examples(start, stop)
        seen: set[str] = set()
        for e in exs:
            if e.id in seen:
                raise ValueError(f"{self.source.path}: duplicate example id {e.id!r} (rows {start}..{stop}); "
                                 f"ids must be unique for accepted/rejects to account for every example")
            seen.add(e.id)
        skipped = [e for e in exs if e.id in self.renderer.exemplar_ids]
        keep = [e for e in exs if e.id not in self.renderer.exemplar_ids]
        ex_json = json.dumps([{"id": e.id, "input": e.input, "gold": e.label} for e in skipped])
        out = []
        for e in keep:
            prompt = "" if self.chat else self.renderer.completion(e.input)
            messages = self.renderer.messages_json(e.input) if self.chat else ""
            fields = json.dumps(e.fields, ensure_ascii=False)
            for s in range(self.k):
                out.append({"id": e.id, "sample": s, "shard": shard, "shard_expected": len(keep) * self.k,
                            "shard_exemplars": ex_json, "prompt": prompt, "messages": messages, "input": e.input,
                            "gold": e.label, "fields": fields, "teacher": e.teacher})
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for d in batch.to_pylist():
            rows += self.rows(d["shard"], d["start"], d["stop"])
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


# ---- driver-side bookkeeping --------------------------------------------------------------------
@dataclass
class ShardBuf:
    expected: int = -1
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


class Run:
    """Collects parsed samples per shard and commits a shard when all its samples are in."""

    def __init__(self, cfg: TeacherConfig, ds: TaskDataset, ledger: Ledger, teacher_model: str, total_shards: int,
                 total_examples: int):
        self.cfg, self.ds, self.ledger, self.teacher_model = cfg, ds, ledger, teacher_model
        self.bufs: dict[int, ShardBuf] = {}
        self.total_shards, self.total_examples = total_shards, total_examples
        self.done_shards = self.resumed_shards = sum(1 for _ in ledger.entries())
        self.done_examples = sum(e["examples_in"] for e in ledger.entries())
        self.t0, self.run_examples = time.time(), 0

    def add(self, row: dict[str, Any]) -> None:
        buf = self.bufs.setdefault(row["shard"], ShardBuf())
        if buf.expected < 0:
            buf.expected, buf.exemplars = row["shard_expected"], json.loads(row["shard_exemplars"])
        buf.samples[(row["id"], row["sample"])] = row  # keyed: a retried block cannot duplicate a sample
        if len(buf.samples) == buf.expected:
            self.commit(row["shard"])

    def commit(self, shard_index: int) -> None:
        buf = self.bufs.pop(shard_index)
        by_id: dict[str, list[dict[str, Any]]] = {}
        for (i, _), s in buf.samples.items():
            by_id.setdefault(i, []).append(s)
        accepted, rejects = [], [judge.exemplar_reject(e, self.ds.name) for e in buf.exemplars]
        reasons: Counter[str] = Counter(judge.EXEMPLAR for _ in buf.exemplars)
        correct = with_gold = 0
        for samples in by_id.values():
            ok, row, right = judge.decide(samples, self.ds.name, self.teacher_model, self.cfg.filter.gold_consistency)
            (accepted if ok else rejects).append(row)
            if not ok:
                reasons[row["reason"]] += 1
            if right is not None:
                with_gold, correct = with_gold + 1, correct + int(right)
        n_in = len(by_id) + len(buf.exemplars)
        counts = {"shard": shard_index, "examples_in": n_in, "accepted": len(accepted), "rejected": len(rejects),
                  "rejected_by_reason": dict(reasons), "teacher_correct": correct, "with_gold": with_gold,
                  "samples": len(buf.samples), "sample_errors": sum(1 for s in buf.samples.values() if s["error"]),
                  "tokens_in": sum(int(s["tokens_in"] or 0) for s in buf.samples.values()),
                  "tokens_out": sum(int(s["tokens_out"] or 0) for s in buf.samples.values()),
                  "exemplar_ids": [e["id"] for e in buf.exemplars]}
        assert n_in == len(accepted) + len(rejects), counts
        self.ledger.commit(Shard(shard_index, 0, 0), accepted, rejects, counts)
        self.done_shards += 1
        self.done_examples += n_in
        self.run_examples += n_in
        self.progress()

    def progress(self) -> None:
        if not self.cfg.progress:
            return
        dt = max(time.time() - self.t0, 1e-9)
        rate = self.run_examples / dt
        left = self.total_examples - self.done_examples
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        print(f"[sbs rationales] shards {self.done_shards}/{self.total_shards}  examples "
              f"{self.done_examples}/{self.total_examples}  {rate:.1f} ex/s  eta {eta}", file=sys.stderr, flush=True)


# ---- execution ----------------------------------------------------------------------------------
def _stream(ds_rows, backend: TeacherBackend, dataset: TaskDataset, sink: Callable[[dict[str, Any]], None]) -> None:
    out = backend.generate(ds_rows).map_batches(judge.parse_batch, batch_format="pyarrow", batch_size=None,
                                                fn_kwargs={"ds": dataset}, num_cpus=0.25)
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            sink(row)


def _recover(run: Run, todo: list[Shard], loader: ShardLoader, backend: TeacherBackend, dataset: TaskDataset) -> None:
    """Shards still open after the main pass: rerun their missing samples one row per block, then
    reject as teacher_crashed whatever still never came back."""
    import ray.data

    missing: list[dict[str, Any]] = []
    for sh in todo:
        if run.ledger.done(sh):
            continue
        rows = loader.rows(sh.index, sh.start, sh.stop)
        buf = run.bufs.setdefault(sh.index, ShardBuf())
        if buf.expected < 0:
            buf.expected = len(rows)
            buf.exemplars = json.loads(rows[0]["shard_exemplars"]) if rows else [
                {"id": e.id, "input": e.input, "gold": e.label} for e in loader.examples(sh.start, sh.stop)]
        missing += [r for r in rows if (r["id"], r["sample"]) not in buf.samples]
    if missing:
        print(f"[sbs rationales] re-running {len(missing)} sample(s) whose teacher block failed, one per block",
              file=sys.stderr, flush=True)
        iso = type(backend)(backend.cfg.model_copy(update={"batch_size": 1}))
        iso_ds = ray.data.from_arrow(pa.Table.from_pylist(missing, schema=ROW_SCHEMA)).repartition(len(missing))
        _stream(iso_ds, iso, dataset, lambda r: run.bufs[r["shard"]].samples.__setitem__((r["id"], r["sample"]), r))
        for r in missing:
            buf = run.bufs[r["shard"]]
            if (r["id"], r["sample"]) not in buf.samples:
                buf.samples[(r["id"], r["sample"])] = judge.crashed_sample(
                    r, f"the teacher failed on this row in its block ({backend.cfg.max_task_retries + 1} "
                    f"tries) and again alone ({backend.cfg.max_task_retries + 1} tries)")
    for idx in sorted(run.bufs):
        run.commit(idx)


def execute(cfg: TeacherConfig, backend: TeacherBackend | None = None) -> dict[str, Any]:
    """Run (or resume) the teacher stage into `cfg.out`; returns the stats written to stats.json."""
    import ray.data

    dataset = get_dataset(cfg.dataset)
    if cfg.sampling.stop is None:
        cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"stop": default_stop(dataset)})})
    backend = backend or make_backend(cfg)
    renderer = Renderer(load_prompt(dataset), cfg.prompt.mode, hold_out=backend.uses_prompt)
    out = Path(cfg.out)
    ledger = Ledger(out)
    source = resolve_source(cfg, dataset, out)
    n = min(source.rows, cfg.limit) if cfg.limit else source.rows
    shards = plan_shards(n, cfg.shard_size)
    ledger.check_fingerprint(_fingerprint(cfg, dataset, source, n, backend))
    todo = [s for s in shards if not ledger.done(s)]
    loader = ShardLoader(dataset, source, renderer, backend.wants_chat, cfg.sampling.k)
    run = Run(cfg, dataset, ledger, backend.describe(), len(shards), n)
    t0 = time.time()
    if todo:
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
        ctx.max_errored_blocks, ctx.enable_progress_bars = -1, False
        try:
            items = [{"shard": s.index, "start": s.start, "stop": s.stop} for s in todo]
            rows = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                loader, batch_format="pyarrow", batch_size=1, num_cpus=0.25)
            try:
                _stream(rows, backend, dataset, run.add)
                _recover(run, todo, loader, backend, dataset)
            except Exception as e:  # e.g. every actor dies at start-up (bad model path)
                raise RuntimeError(f"teacher stage stopped: {type(e).__name__}: {str(e)[:1500]}\n"
                                   f"{run.done_shards}/{run.total_shards} shards are committed in {out}; "
                                   f"fix the cause and rerun the same command to resume") from e
        finally:
            ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    return write_stats(cfg, dataset, ledger, renderer, run, time.time() - t0, backend.describe())


def _fingerprint(cfg: TeacherConfig, dataset: TaskDataset, source: InputSource, n: int, backend: TeacherBackend
                 ) -> dict[str, Any]:
    """What must match for a rerun to resume into the same directory: everything that changes a
    teacher output (the whole sampling and prompt sections included), so shards from two different
    teachers never mix. Keys are config field paths, so a refusal names the fields that differ
    (`dataset` is the dataset's name: a generic dataset's YAML may move)."""
    return {"dataset": dataset.name, "split": cfg.split, "source": cfg.source, "input": source.name, "rows": n,
            "hub_data_files": cfg.hub_data_files.get(cfg.split) if cfg.source == "hub" else None,
            "shard_size": cfg.shard_size, "backend": backend.describe(),
            **{f"prompt.{k}": v for k, v in cfg.prompt.model_dump(mode="json").items()},
            **{f"sampling.{k}": v for k, v in cfg.sampling.model_dump(mode="json").items()},
            "filter.gold_consistency": cfg.filter.gold_consistency}


def write_stats(cfg: TeacherConfig, dataset: TaskDataset, ledger: Ledger, renderer: Renderer, run: Run, wall: float,
                teacher_model: str) -> dict[str, Any]:
    tot: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    exemplar_hits: list[str] = []
    for e in ledger.entries():
        for k in ("examples_in", "accepted", "rejected", "teacher_correct", "with_gold", "samples",
                  "sample_errors", "tokens_in", "tokens_out"):
            tot[k] += e[k]
        reasons.update(e["rejected_by_reason"])
        exemplar_hits += e["exemplar_ids"]
    stats = {
        "dataset": dataset.name, "split": cfg.split, "teacher_model": teacher_model, "out": str(ledger.out),
        "examples_in": tot["examples_in"], "accepted": tot["accepted"], "rejected": tot["rejected"],
        "rejected_by_reason": dict(sorted(reasons.items())),
        "counts_add_up": tot["examples_in"] == tot["accepted"] + tot["rejected"],
        "teacher_accuracy": tot["teacher_correct"] / tot["with_gold"] if tot["with_gold"] else None,
        "with_gold": tot["with_gold"], "samples": tot["samples"], "sample_errors": tot["sample_errors"],
        "tokens_in": tot["tokens_in"], "tokens_out": tot["tokens_out"],
        "exemplar_ids": sorted(renderer.exemplar_ids), "exemplar_ids_in_input": sorted(exemplar_hits),
        "this_run": {"examples": run.run_examples, "wall_s": round(wall, 3),
                     "examples_per_s": round(run.run_examples / wall, 3) if wall > 0 else None,
                     "shards_already_done": run.resumed_shards},
        "shards": run.total_shards,
        "config": cfg.model_dump(mode="json"),
    }
    tmp = ledger.out / ".stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=1))
    tmp.replace(ledger.out / "stats.json")
    return stats
