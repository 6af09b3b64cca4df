"""`sbs demo` (the README's `make demo`): the whole pipeline on the embedded CPU default.

SVAMP -> rationales (the recorded PaLM 540B teacher through the Ray Data pipeline, plus the live
Gemma 3 270M teacher on a handful of examples) -> multi-task training of the MiniLM student
(Ray Train + DeepSpeed, CPU) -> label-only evaluation on test -> the student served with Ray
Serve and asked a few questions over HTTP on 127.0.0.1 -> a summary table. Everything it writes
goes under --out (default outputs/demo); rerunning resumes the teacher and training stages.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

DEMO_QUESTIONS = [
    {"problem": "Tom has 12 apples. He gives 5 apples to his friend.\nHow many apples does Tom have now?"},
    {"problem": "A box holds 6 pencils. There are 4 boxes.\nHow many pencils are there in all?"},
    {"problem": "Sara baked 30 cookies and shared them equally among 5 friends.\nHow many cookies did each friend get?"},
]


class Steps:
    """Prints each step as it starts and ends, and keeps what it returned for the summary."""

    def __init__(self, total: int):
        self.total, self.n, self.rows = total, 0, []
        self.t0 = time.time()

    def run(self, title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.n += 1
        print(f"\n=== [{self.n}/{self.total}] {title} (t+{time.time() - self.t0:.0f}s)", flush=True)
        t = time.time()
        out = fn()
        secs = time.time() - t
        print(f"=== [{self.n}/{self.total}] done in {secs:.0f}s", flush=True)
        self.rows.append({"step": title, "seconds": round(secs, 1), **out})
        return out


def step_teacher_report(out: Path) -> dict[str, Any]:
    from sbs.teacher_report import format_table, report

    rows = [report("svamp", s) for s in ("train", "test")]
    print(format_table(rows))
    (out / "teacher_report.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {"summary": f"PaLM teacher accuracy on SVAMP test {rows[1]['teacher_accuracy']:.3f}",
            "written": str(out / "teacher_report.json")}


def _teacher(overrides: list[str]) -> dict[str, Any]:
    from sbs.config import load_config
    from sbs.teacher.config import TeacherConfig
    from sbs.teacher.pipeline import execute

    return execute(load_config(TeacherConfig, None, overrides))


def step_replay(out: Path) -> dict[str, Any]:
    stats = _teacher(["dataset=svamp", "split=train", "backend=replay", f"out={out / 'rationales' / 'svamp'}",
                      "shard_size=200"])
    return {"summary": f"{stats['accepted']} accepted / {stats['examples_in']} in, rejected {stats['rejected']}",
            "written": str(out / "rationales" / "svamp")}


def step_gemma(out: Path, n: int) -> dict[str, Any]:
    from sbs.teacher.gemma import ensure_gemma

    path = ensure_gemma()
    stats = _teacher(["dataset=svamp", "split=train", f"limit={n}", "backend=hf", f"hf.model={path}",
                      "sampling.max_tokens=64", "filter.gold_consistency=false", f"out={out / 'rationales' / 'gemma'}"])
    acc_file = out / "rationales" / "gemma" / "accepted"
    sample = ""
    if acc_file.is_dir():
        import pyarrow.parquet as pq

        rows = [r for f in sorted(acc_file.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        if rows:
            sample = f"; e.g. rationale {rows[0]['rationale'][:100]!r} -> {rows[0]['label']!r}"
    why = ", ".join(f"{k}={v}" for k, v in stats.get("rejected_by_reason", {}).items())
    return {"summary": f"live Gemma 3 270M: {stats['accepted']} accepted / {stats['examples_in']} in"
                       f"{f' (rejected: {why})' if why else ''}{sample}",
            "written": str(out / "rationales" / "gemma")}


def step_train(out: Path, steps: int) -> dict[str, Any]:
    from sbs.student.config import load_train_config
    from sbs.student.trainer import train

    cfg = load_train_config("configs/student/svamp_multitask.yaml" if Path("configs/student/svamp_multitask.yaml")
                            .is_file() else None, [
        "model.name=minilm", "method.name=multitask", "data.dataset=svamp",
        f"data.rationales={out / 'rationales' / 'svamp'}", f"train.steps={steps}",
        f"train.eval_every={max(1, steps // 2)}", "train.global_batch=16", "train.micro_batch=16",
        "data.valid_limit=40", "data.max_input_length=96", "data.max_rationale_length=64",
        "data.max_label_length=24", "scale.num_workers=1", "scale.cpus_per_worker=2",
        "run.name=demo-svamp-multitask", f"run.storage_path={out / 'runs'}", f"run.export_dir={out / 'student'}"])
    outcome = train(cfg)
    return {"summary": f"best val accuracy {outcome.best_metrics.get('val_accuracy')} at step "
                       f"{outcome.best_metrics.get('step')}", "written": str(outcome.export_dir)}


def step_eval(out: Path) -> dict[str, Any]:
    from sbs.student.evaluate import evaluate, write_results

    res = evaluate(out / "student", split="test", batch_size=32)
    write_results(res, out / "eval_test.json")
    return {"summary": f"label-only test accuracy {res['accuracy']:.3f} on {res['n']} SVAMP test problems",
            "written": str(out / "eval_test.json")}


def step_serve(out: Path, port: int) -> dict[str, Any]:
    import requests
    from ray import serve

    from sbs.config import load_config
    from sbs.serve.cli import deploy
    from sbs.serve.config import ServeConfig

    cfg = load_config(ServeConfig, None, [f"port={port}", f"students=[{{dataset: svamp, export_dir: {out / 'student'}}}]"])
    url = deploy(cfg)
    try:
        r = requests.post(f"{url}/v1/predict", json={"dataset": "svamp", "inputs": DEMO_QUESTIONS, "explain": True},
                          timeout=120)
        r.raise_for_status()
        answers = r.json()
        (out / "serve_answers.json").write_text(json.dumps(answers, indent=2), encoding="utf-8")
        for q, a in zip(DEMO_QUESTIONS, answers.get("predictions", [])):
            print(f"  Q: {q['problem']!r}\n  A: {a.get('label')!r}   rationale: {str(a.get('rationale'))[:120]!r}")
        model = requests.get(f"{url}/v1/model", timeout=30).json()
    finally:
        serve.shutdown()
    return {"summary": f"served at {url} ({len(DEMO_QUESTIONS)} questions answered over HTTP); model "
                       f"{json.dumps(model)[:120]}", "written": str(out / "serve_answers.json")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="where everything goes")
    p.add_argument("--steps", type=int, default=200, help="student training steps (multitask, batch 16)")
    p.add_argument("--gemma-examples", type=int, default=3, help="examples for the live Gemma teacher (0: skip)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port of the demo's Serve app (127.0.0.1)")
    p.add_argument("--skip-serve", action="store_true", help="stop after evaluation")


def run(args: argparse.Namespace) -> int:
    import ray

    from sbs.ray_local import init_local

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ray Data's per-operator progress bars (from every worker) would drown the step lines.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    init_local()
    steps = Steps(6 - (args.gemma_examples == 0) - args.skip_serve)
    try:
        steps.run("teacher report: parse the recorded PaLM 540B outputs", lambda: step_teacher_report(out))
        steps.run("rationales: recorded PaLM teacher through the Ray Data pipeline", lambda: step_replay(out))
        if args.gemma_examples:
            steps.run(f"rationales: live Gemma 3 270M teacher on {args.gemma_examples} examples (CPU)",
                      lambda: step_gemma(out, args.gemma_examples))
        steps.run(f"student: multi-task MiniLM on SVAMP, {args.steps} steps (Ray Train + DeepSpeed, CPU)",
                  lambda: step_train(out, args.steps))
        steps.run("evaluation: label-only on SVAMP test", lambda: step_eval(out))
        if not args.skip_serve:
            steps.run("serving: Ray Serve on 127.0.0.1, questions over HTTP", lambda: step_serve(out, args.port))
    finally:
        ray.shutdown()
    print("\n=== summary")
    w = max(len(r["step"]) for r in steps.rows)
    for r in steps.rows:
        print(f"{r['step'].ljust(w)}  {r['seconds']:>6.0f}s  {r['summary']}")
    print(f"\nwall time {time.time() - steps.t0:.0f}s; everything is under {out}:")
    for r in steps.rows:
        print(f"  {r['written']}")
    (out / "summary.json").write_text(json.dumps(steps.rows, indent=2), encoding="utf-8")
    return 0
