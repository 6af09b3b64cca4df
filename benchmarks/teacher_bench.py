"""Teacher-stage benchmark (a script printing figures and ratios, not a timed test).

    .venv/bin/python benchmarks/teacher_bench.py --hf          # Ray Data pipeline vs naive loop, tiny causal LM
    .venv/bin/python benchmarks/teacher_bench.py --stream      # 550,000 e-SNLI-shaped rows through replay
    .venv/bin/python benchmarks/teacher_bench.py --http        # our OpenAI actor vs ray.data.llm HttpRequestProcessor
    .venv/bin/python benchmarks/teacher_bench.py --all --json out.json

--hf: the same tiny random Llama (built from a config) over the same SVAMP test examples and the
same prompt/decoding, (a) through `sbs rationales` (batched, Ray Data actor pool, parse, write) and
(b) one example at a time in-process with the same generator code (batch of 1, no Ray).
--stream: repeats the shipped e-SNLI valid rows with fresh ids to 550,000 rows, runs the replay
teacher over them, and reports examples/s and peak RSS of the driver and of the Ray processes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from sbs.config import load_config  # noqa: E402
from sbs.teacher.config import TeacherConfig  # noqa: E402
from sbs.teacher.pipeline import execute  # noqa: E402


def tiny_lm(path: Path, hidden: int = 64, layers: int = 2) -> str:
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    cfg = LlamaConfig(vocab_size=384, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


class RssSampler:
    """Peak summed RSS of the Ray processes of this session (raylet's descendants), sampled."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval, self.peak, self._stop = psutil, interval, 0, False
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import ray

        session = ray.get_runtime_context().gcs_address  # any Ray of ours: find raylet by session dir
        sdir = ray._private.worker.global_worker.node.get_session_dir_path()
        raylets = [p for p in self.psutil.process_iter(["cmdline"]) if p.info["cmdline"] and
                   "raylet" in p.info["cmdline"][0] and any(sdir in a for a in p.info["cmdline"])]
        del session
        while not self._stop:
            total = 0
            for r in raylets:
                try:
                    total += sum(c.memory_info().rss for c in r.children(recursive=True)) + r.memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self._stop = True
        self.t.join()


def bench_hf(n: int, work: Path, hidden: int, layers: int, max_tokens: int) -> dict:
    from sbs.teacher.backends.hf import HfGenerator
    from sbs.teacher.pipeline import ShardLoader, resolve_source
    from sbs.teacher.prompts import Renderer, default_stop, load_prompt
    from sbs.datasets import get_dataset

    model = tiny_lm(work / "lm", hidden, layers)
    over = ["dataset=svamp", "split=test", f"limit={n}", "backend=hf", f"hf.model={model}", "prompt.mode=zeroshot",
            f"sampling.max_tokens={max_tokens}", "batch_size=16", "shard_size=1000", "num_actors=1", "num_cpus_per_actor=1",
            "progress=false"]
    cfg = load_config(TeacherConfig, None, over + [f"out={work / 'pipe'}"])
    t = time.time()
    stats = execute(cfg)
    pipe_wall = time.time() - t
    # naive: same rows, same generator code, one example per call, no Ray
    ds = get_dataset("svamp")
    cfg2 = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"stop": default_stop(ds)})})
    loader = ShardLoader(ds, resolve_source(cfg2, ds, work), Renderer(load_prompt(ds), "zeroshot"), False, 1)
    rows = loader.rows(0, 0, n)
    t = time.time()
    gen = HfGenerator(cfg2.model_dump_json(), False)
    load_s = time.time() - t
    t = time.time()
    for r in rows:
        gen(pa.Table.from_pylist([r]))
    naive_wall = time.time() - t
    return {"examples": n, "model": f"llama hidden={hidden} layers={layers} (random, byte tokenizer)",
            "max_tokens": max_tokens, "pipeline_wall_s": round(pipe_wall, 2), "pipeline_ex_per_s": round(n / pipe_wall, 3),
            "naive_wall_s_excl_model_load": round(naive_wall, 2), "naive_model_load_s": round(load_s, 2),
            "naive_ex_per_s": round(n / naive_wall, 3), "ratio_pipeline_over_naive": round(naive_wall / pipe_wall, 2),
            "tokens_out": stats["tokens_out"]}


def synth_esnli(path: Path, rows: int) -> None:
    src = pq.read_table(Path(__file__).resolve().parents[1] / "sbs/data/esnli/valid.parquet")
    w = pq.ParquetWriter(path, src.schema)
    done, rep = 0, 0
    while done < rows:
        t = src.slice(0, min(src.num_rows, rows - done))
        ids = pa.array([f"esnli-syn-{done + i:07d}" for i in range(t.num_rows)])
        w.write_table(t.set_column(0, "id", ids), row_group_size=10_000)
        done, rep = done + t.num_rows, rep + 1
    w.close()


def bench_stream(rows: int, work: Path, shard_size: int) -> dict:
    src = work / "esnli_550k.parquet"
    t = time.time()
    synth_esnli(src, rows)
    build_s = time.time() - t
    cfg = load_config(TeacherConfig, None, ["dataset=esnli", "split=valid", "source=file", f"input_path={src}",
                                            "backend=replay", f"shard_size={shard_size}", f"out={work / 'stream'}",
                                            "progress=false"])
    t = time.time()
    with RssSampler() as rss:
        stats = execute(cfg)
    wall = time.time() - t
    return {"rows": rows, "build_input_s": round(build_s, 1), "input_mb": round(src.stat().st_size / 2**20, 1),
            "wall_s": round(wall, 1), "examples_per_s": round(rows / wall, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ray_processes_peak_rss_mb": round(rss.peak / 2**20, 1), "accepted": stats["accepted"],
            "rejected": stats["rejected"], "counts_add_up": stats["counts_add_up"], "shards": stats["shards"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", action="store_true")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--http", action="store_true")
    p.add_argument("--all", action="store_true")
    p.add_argument("--hf-examples", type=int, default=200)
    p.add_argument("--hidden", type=int, default=256, help="tiny LM width")
    p.add_argument("--layers", type=int, default=4, help="tiny LM depth")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rows", type=int, default=550_000)
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--quick", action="store_true",
                   help="every benchmark at a small size (55k streamed rows, 48 HF examples, 128-wide LM)")
    a = p.parse_args()
    if not (a.hf or a.stream or a.http):
        a.all = True  # no selection: run them all (what `sbs bench` calls)
    if a.quick:
        a.rows, a.hf_examples, a.hidden = min(a.rows, 55_000), min(a.hf_examples, 48), min(a.hidden, 128)
    import ray

    work = Path(tempfile.mkdtemp(prefix="sbsbench"))
    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(work / "ray"))
    out: dict = {}
    try:
        if a.hf or a.all:
            out["hf_pipeline_vs_naive"] = bench_hf(a.hf_examples, work, a.hidden, a.layers, a.max_tokens)
            print(json.dumps(out["hf_pipeline_vs_naive"]), flush=True)
        if a.http or a.all:
            from http_bench import bench_http  # benchmarks/http_bench.py

            out["openai_actor_vs_http_processor"] = bench_http(work)
            print(json.dumps(out["openai_actor_vs_http_processor"]), flush=True)
        if a.stream or a.all:
            out["stream_550k_replay"] = bench_stream(a.rows, work, a.shard_size)
            print(json.dumps(out["stream_550k_replay"]), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
