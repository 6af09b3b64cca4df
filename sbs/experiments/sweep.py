"""`sbs sweep`: methods x training fractions x seeds x datasets, on Ray, resumable.

    sbs sweep --config configs/sweep/svamp_cqa.yaml
    sbs sweep --config configs/sweep/svamp_cqa.yaml --report-only   # tables + plots from finished cells

Each cell trains one student (its own Ray Train run, selected on validation only) and scores it
label-only on the test split. A finished cell writes `cells/<cell>/result.json` atomically and is
never rerun; a killed sweep reruns only the cells without one (and an interrupted cell resumes from
its Ray Train checkpoint, since its run name is stable). Tables (CSV, JSON, Markdown with mean and
standard error over seeds) and plots (PNG) are rewritten after every finished cell.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sbs.config import ConfigError, load_config
from sbs.experiments import results
from sbs.experiments.sweep_config import SweepConfig, SweepDataset
from sbs.ray_local import connect


def cell_name(dataset: str, method: str, fraction: float, seed: int) -> str:
    return f"{Path(dataset).stem}__{method}__f{fraction:g}__s{seed}"


def cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every cell, in the order that makes a partial sweep most useful: per dataset, the first
    seed over all fractions (largest first) and methods, then the next seed."""
    return [{"dataset": d, "method": m, "fraction": f, "seed": s, "cell": cell_name(d.name, m, f, s)}
            for d in cfg.datasets for s in cfg.seeds for f in sorted(cfg.fractions, reverse=True)
            for m in cfg.methods]


def student_overrides(cfg: SweepConfig, d: SweepDataset, method: str, fraction: float, seed: int,
                      cell: str) -> list[str]:
    out = Path(cfg.out).resolve()
    ov = [*cfg.overrides, *d.overrides,
          f"data.dataset={d.name}", f"data.train_split={d.train_split}", f"data.fraction={fraction}",
          f"data.seed={seed}", f"train.seed={seed}", f"method.name={method}",
          f"run.name={cell}", f"run.storage_path={out / 'runs'}", f"run.export_dir={out / 'cells' / cell / 'export'}"]
    if d.valid_split:
        ov.append(f"data.valid_split={d.valid_split}")
    if method != "standard" and d.rationales:
        ov.append(f"data.rationales={Path(d.rationales).resolve()}")
    return ov


def portable(text: str, root: Path | None = None) -> str:
    """A path (or key=path override) under `root` (default: the working directory), written relative
    to it: committed results then name no machine's checkout and their commands replay from any
    clone's root."""
    base = str((root or Path.cwd()).resolve()) + os.sep
    return text.replace(base, "")


def run_cell(cfg_json: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """Train + test one cell; writes and returns its result row. Runs in a Ray task."""
    from sbs.student.config import load_train_config
    from sbs.student.evaluate import evaluate
    from sbs.student.trainer import train

    cfg = SweepConfig.model_validate(cfg_json)
    d = SweepDataset.model_validate(cell["dataset"])
    ov = student_overrides(cfg, d, cell["method"], cell["fraction"], cell["seed"], cell["cell"])
    scfg = load_train_config(cfg.student_config, ov)
    t0 = time.time()
    outcome = train(scfg)
    train_s = time.time() - t0
    import torch

    # the test evaluation runs here, once the cell's workers are gone: on the CPUs they held
    torch.set_num_threads(scfg.scale.cpus_per_worker * scfg.scale.num_workers)
    ev = evaluate(outcome.export_dir, split=d.test_split, limit=d.test_limit, batch_size=cfg.eval_batch)
    # Choice scoring beside free generation where the answers form a closed set (not SVAMP's
    # equations); free generation stays the headline, as in the paper.
    from sbs.datasets import get_dataset

    ds = get_dataset(d.name)
    choice = None
    if all(ds.candidates(e.fields) for e in ds.load(d.test_split, limit=1)):
        choice = evaluate(outcome.export_dir, split=d.test_split, limit=d.test_limit, batch_size=cfg.eval_batch,
                          decoding="choices")
    row = {"dataset": Path(d.name).stem, "method": cell["method"], "fraction": cell["fraction"], "seed": cell["seed"],
           "test_accuracy": ev["accuracy"], "test_choice_accuracy": choice["accuracy"] if choice else None,
           "test_examples": ev["n"],
           "test_distinct_predictions": ev["distinct_predictions"], "test_top_prediction_share": ev["top_prediction_share"],
           "val_accuracy": outcome.best_metrics.get("val_accuracy"), "best_step": outcome.best_metrics.get("step"),
           "train_rows": outcome.data_stats.get("train_rows"), "train_seconds": round(train_s, 1),
           # train_seconds is this attempt's wall time: a cell resumed from a checkpoint says so here
           "resumed_from_step": outcome.last_metrics.get("resumed_from"),
           "cell": cell["cell"], "overrides": [portable(o) for o in ov]}
    cell_dir = Path(cfg.out) / "cells" / cell["cell"]
    cell_dir.mkdir(parents=True, exist_ok=True)
    # per-example correctness: what the paired bootstrap over test examples resamples
    per = {"generate": {p["id"]: bool(p["correct"]) for p in ev["predictions"]}}
    if choice:
        per["choices"] = {p["id"]: bool(p["correct"]) for p in choice["predictions"]}
    (cell_dir / results.PER_EXAMPLE).write_text(json.dumps(per), encoding="utf-8")
    for name in ("train_metrics.jsonl", "train_curves.png"):  # the cell's training curve
        if (Path(outcome.export_dir) / name).is_file():
            shutil.copy2(Path(outcome.export_dir) / name, cell_dir / name)
    tmp = cell_dir / "result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2), encoding="utf-8")
    os.replace(tmp, cell_dir / "result.json")  # atomic: a cell is finished or it is not
    if not cfg.keep_artifacts:
        shutil.rmtree(outcome.export_dir, ignore_errors=True)
        shutil.rmtree(Path(cfg.out) / "runs" / cell["cell"], ignore_errors=True)
    return row


def report(cfg: SweepConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    done = results.read_cells(out)
    paths: dict[str, Any] = {}
    if done:
        base = Path(cfg.baseline) if cfg.baseline else None
        paths = {k: str(v) for k, v in results.write_tables(out, done, base).items()}
        paths["plots"] = [str(p) for p in results.write_plots(out, results.summarize(done))]
    return {"finished_cells": len(done), **paths}


def run_sweep(cfg: SweepConfig, max_cells: int | None = None) -> dict[str, Any]:
    import ray

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(portable(json.dumps(cfg.model_dump(mode="json"), indent=2)), encoding="utf-8")
    todo = [c for c in cells(cfg) if not (out / "cells" / c["cell"] / "result.json").is_file()]
    total = len(cells(cfg))
    print(f"[sbs sweep] {cfg.name}: {total - len(todo)} of {total} cells already finished; {len(todo)} to run",
          flush=True)
    if max_cells is not None:
        todo = todo[:max_cells]
    # Pre-flight: every cell's student config must load before any cell starts, so a typo fails
    # in a second here rather than once per cell after Ray has started.
    from sbs.student.config import load_train_config
    from sbs.student.data import accepted_files

    for c in todo:
        scfg = load_train_config(cfg.student_config, student_overrides(cfg, c["dataset"], c["method"], c["fraction"],
                                                                       c["seed"], c["cell"]))
        if scfg.data.rationales and scfg.method.name != "standard":  # the teacher output a cell reads
            accepted_files(scfg.data.rationales)
    connect()
    # The cell task itself holds no CPU: its Ray Train workers do, so Ray runs as many cells at
    # once as their workers fit, capped by parallel_cells.
    task = ray.remote(num_cpus=0, max_retries=0)(run_cell)
    cfg_json = cfg.model_dump(mode="json")
    pending: dict[Any, dict[str, Any]] = {}
    failed: list[str] = []
    queue = [dict(c, dataset=c["dataset"].model_dump(mode="json")) for c in todo]
    finished = 0
    while queue or pending:
        while queue and len(pending) < cfg.parallel_cells:
            c = queue.pop(0)
            print(f"[sbs sweep] start {c['cell']}", flush=True)
            pending[task.remote(cfg_json, c)] = c
        ready, _ = ray.wait(list(pending), num_returns=1)
        c = pending.pop(ready[0])
        try:
            row = ray.get(ready[0])
            finished += 1
            print(f"[sbs sweep] done {c['cell']}: test accuracy {row['test_accuracy']:.4f} "
                  f"(val {row['val_accuracy']}, {row['train_seconds']} s) [{finished}/{len(todo)}]", flush=True)
            report(cfg)
        except Exception as e:  # one failed cell must not lose the others; it is rerun next time
            failed.append(c["cell"])
            cause = getattr(e, "cause", None) or e  # a RayTaskError's text starts with the remote traceback
            print(f"[sbs sweep] FAILED {c['cell']}: {type(cause).__name__}: {str(cause)[:500]}", flush=True)
    summary = report(cfg)
    summary["failed_cells"] = failed
    # the tables hold every finished cell in `out`; this run's plan may be a part of them (methods=... on the CLI)
    planned = sum((out / "cells" / c["cell"] / "result.json").is_file() for c in cells(cfg))
    print(f"[sbs sweep] {planned} of the {total} planned cells finished ({summary['finished_cells']} in the tables"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}); tables and plots in {out}", flush=True)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="sweep YAML (see configs/sweep/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the sweep config")
    p.add_argument("--max-cells", type=int, default=None, help="run at most N unfinished cells, then stop")
    p.add_argument("--report-only", action="store_true", help="only rewrite tables and plots from finished cells")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(SweepConfig, args.config, args.overrides)
    if cfg.student_config and not Path(cfg.student_config).is_absolute():
        # like `include:`, a student config named in a sweep YAML is relative to that YAML
        cfg.student_config = str((Path(args.config).parent / cfg.student_config).resolve())
    if cfg.baseline and not (Path(cfg.baseline) / "cells").is_dir():
        raise ConfigError(f"baseline: {cfg.baseline} holds no sweep cells (<out>/cells/*/result.json)")
    if args.report_only:
        print(json.dumps(report(cfg), indent=2))
        return 0
    summary = run_sweep(cfg, args.max_cells)
    return 1 if summary["failed_cells"] else 0
