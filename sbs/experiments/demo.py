"""`sbs demo` (the README's `make demo`): the whole pipeline on the embedded CPU default.

CommonsenseQA -> rationales (the recorded PaLM 540B teacher through the Ray Data pipeline, plus the
live Gemma 3 270M teacher on a handful of examples) -> multi-task training of the Gemma 3 270M
student with LoRA (Ray Train + DeepSpeed, CPU) -> label-only evaluation on test, by free
generation (the paper's metric) and by choice scoring, beside the teacher, chance and the
untrained model -> the student served with Ray Serve and asked a few questions over HTTP on
127.0.0.1 -> a summary table. Quiet by default: the terminal shows the step lines and the summary;
Ray's and the libraries' output goes to <out>/demo.log (`--verbose` shows it all). Everything it
writes goes under --out (default outputs/demo); rerunning resumes the teacher and training stages.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

DATASET = "cqa"
DEMO_QUESTIONS = [
    {"question": "Where would you put a plate after washing it?",
     "choices": ["cupboard", "table", "flower pot", "restaurant", "dishwasher"]},
    {"question": "What do people usually do when they are tired?",
     "choices": ["run a marathon", "go to sleep", "eat glass", "write a book", "climb a tree"]},
    {"question": "Where is a good place to keep milk cold?",
     "choices": ["oven", "refrigerator", "garden", "car roof", "bookshelf"]},
]
TERMINAL: TextIO = sys.stdout  # the step lines go here even while stdout is redirected to the log


def say(msg: str) -> None:
    print(msg, file=TERMINAL, flush=True)


class Steps:
    """Prints each step as it starts and ends, and keeps what it returned for the summary."""

    def __init__(self, total: int):
        self.total, self.n, self.rows = total, 0, []
        self.t0 = time.time()

    def run(self, title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.n += 1
        say(f"=== [{self.n}/{self.total}] {title} (t+{time.time() - self.t0:.0f}s)")
        print(f"\n=== [{self.n}/{self.total}] {title}", flush=True)  # also in the log, to find a step's output
        t = time.time()
        out = fn()
        secs = time.time() - t
        say(f"    {out['summary']} ({secs:.0f}s)")
        self.rows.append({"step": title, "seconds": round(secs, 1), **out})
        return out


def step_teacher_report(out: Path) -> dict[str, Any]:
    from sbs.teacher_report import format_table, report

    rows = [report(DATASET, s) for s in ("train", "test")]
    print(format_table(rows))
    (out / "teacher_report.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {"summary": f"PaLM 540B teacher accuracy on CQA test {rows[1]['teacher_accuracy']:.3f}",
            "teacher_accuracy": rows[1]["teacher_accuracy"], "written": str(out / "teacher_report.json")}


def _teacher(overrides: list[str]) -> dict[str, Any]:
    from sbs.config import load_config
    from sbs.teacher.config import TeacherConfig
    from sbs.teacher.pipeline import execute

    return execute(load_config(TeacherConfig, None, overrides))


def step_replay(out: Path) -> dict[str, Any]:
    stats = _teacher([f"dataset={DATASET}", "split=train", "backend=replay", f"out={out / 'rationales' / DATASET}",
                      "shard_size=2000", "filter.gold_consistency=false"])
    return {"summary": f"{stats['accepted']} accepted / {stats['examples_in']} in, rejected {stats['rejected']}",
            "written": str(out / "rationales" / DATASET)}


def step_gemma(out: Path, n: int) -> dict[str, Any]:
    from sbs.teacher.gemma import ensure_gemma

    path = ensure_gemma()
    stats = _teacher([f"dataset={DATASET}", "split=train", f"limit={n}", "backend=hf", f"hf.model={path}",
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


def train_overrides(out: Path, steps: int) -> list[str]:
    """The demo's student: Gemma 3 270M + LoRA, multi-task, one 2-CPU worker, ZeRO-0 (one worker). It
    reads the question alone (data.choice_layout=none) and is selected by choice scoring: the layout
    in which the pretrained model's own knowledge ranks the choices (docs/results.md, sweep 5). The
    choices listed before the question (`before`) need a longer run: 40 steps of it scored under
    the untrained model (docs/results.md, the demo)."""
    return ["model.name=gemma3-270m", "model.lora_r=16", "method.name=multitask", f"data.dataset={DATASET}",
            "data.choice_layout=none", "train.select_by=choices",
            f"data.rationales={out / 'rationales' / DATASET}", f"train.steps={steps}",
            f"train.eval_every={max(1, steps // 2)}", "train.global_batch=16", "train.micro_batch=16",
            "train.lr=3e-4", "train.warmup_steps=4", "train.zero_stage=0", "data.valid_limit=60",
            "data.max_input_length=128", "data.max_rationale_length=48", "data.max_label_length=16",
            "scale.num_workers=1", "scale.cpus_per_worker=2", f"run.name=demo-{DATASET}-multitask",
            f"run.storage_path={out / 'runs'}", f"run.export_dir={out / 'student'}"]


def step_train(out: Path, steps: int) -> dict[str, Any]:
    from sbs.student.config import load_train_config
    from sbs.student.trainer import train

    outcome = train(load_train_config(None, train_overrides(out, steps)))
    return {"summary": f"best validation accuracy {outcome.best_metrics.get('val_accuracy'):.3f} at step "
                       f"{outcome.best_metrics.get('step')}; curves in {outcome.export_dir / 'train_curves.png'}",
            "written": str(outcome.export_dir)}


@contextlib.contextmanager
def _all_cores():
    """The driver evaluates while Ray's workers idle: give torch every core, then hand them back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def step_untrained(out: Path, limit: int) -> dict[str, Any]:
    """The same model before training, same prompt layout and choice scoring: what training added."""
    from sbs.student.evaluate import evaluate, untrained, write_results

    student = untrained("gemma3-270m", DATASET, "none")
    with _all_cores():
        res = evaluate(out / "untrained", split="test", limit=limit, student=student, decoding="choices")
    write_results(res, out / "eval_untrained_choices.json")
    return {"summary": f"untrained Gemma 3 270M, choice scoring: {res['accuracy']:.3f} on {res['n']} CQA test "
                       "questions", "untrained_choices": res["accuracy"],
            "written": str(out / "eval_untrained_choices.json")}


def step_eval(out: Path, limit: int) -> dict[str, Any]:
    from sbs.predict import Student
    from sbs.student.evaluate import evaluate, write_results

    with _all_cores():
        student = Student.load(out / "student")  # once for both decodings
        gen = evaluate(out / "student", split="test", limit=limit, student=student)
        ch = evaluate(out / "student", split="test", limit=limit, decoding="choices", student=student)
    write_results(gen, out / "eval_test.json")
    write_results(ch, out / "eval_test_choices.json")
    return {"summary": f"label-only test accuracy {gen['accuracy']:.3f} (free generation), {ch['accuracy']:.3f} "
                       f"(choice scoring) on {gen['n']} CQA test questions",
            "student_generate": gen["accuracy"], "student_choices": ch["accuracy"], "n": gen["n"],
            "written": f"{out / 'eval_test.json'}, {out / 'eval_test_choices.json'}"}


def step_serve(out: Path, port: int) -> dict[str, Any]:
    import requests
    from ray import serve

    from sbs.config import load_config
    from sbs.serve.cli import deploy
    from sbs.serve.config import ServeConfig

    cfg = load_config(ServeConfig, None, [f"port={port}",
                                          f"students=[{{dataset: {DATASET}, export_dir: {out / 'student'}}}]"])
    url = deploy(cfg)
    try:
        answers = {}
        for decoding in ("generate", "choices"):
            r = requests.post(f"{url}/v1/predict", json={"dataset": DATASET, "inputs": DEMO_QUESTIONS,
                                                         "decoding": decoding}, timeout=300)
            r.raise_for_status()
            answers[decoding] = r.json()
        (out / "serve_answers.json").write_text(json.dumps(answers, indent=2), encoding="utf-8")
        for q, g, c in zip(DEMO_QUESTIONS, answers["generate"]["predictions"], answers["choices"]["predictions"]):
            best = sorted(c["scores"].items(), key=lambda kv: -kv[1])[:2]
            say(f"    Q: {q['question']}  A: {g['label']!r} (choice scoring: {c['label']!r}; top scores "
                + ", ".join(f"{k} {v:.2f}" for k, v in best) + ")")
    finally:
        serve.shutdown()
    return {"summary": f"served at {url}: {len(DEMO_QUESTIONS)} questions answered over HTTP, generated and by "
                       "per-choice scores", "written": str(out / "serve_answers.json")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="where everything goes")
    p.add_argument("--steps", type=int, default=40, help="student training steps (multitask, batch 16)")
    p.add_argument("--test-limit", type=int, default=200, help="CQA test questions scored (of 1,221)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' output here too, "
                   "not only in <out>/demo.log")
    p.add_argument("--gemma-examples", type=int, default=3, help="examples for the live Gemma teacher (0: skip)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port of the demo's Serve app (127.0.0.1)")
    p.add_argument("--skip-serve", action="store_true", help="stop after evaluation")


@contextlib.contextmanager
def _quiet(log: Path, verbose: bool):
    """Send fds 1 and 2 (this process's prints, Ray's forwarded worker logs, C-level output) to `log`;
    the step lines keep the terminal through a duplicate of the original stdout."""
    global TERMINAL
    if verbose:
        yield
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    TERMINAL = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            TERMINAL.close()
            TERMINAL = sys.stdout


def run(args: argparse.Namespace) -> int:
    import ray

    from sbs.ray_local import connect

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ray Data's per-operator progress bars (from every worker) would drown the step lines.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    say(f"sbs demo: CommonsenseQA, Gemma 3 270M student (LoRA, multi-task), {args.steps} steps; "
        f"logs in {log if not args.verbose else 'this terminal'}")
    steps = Steps(7 - (args.gemma_examples == 0) - args.skip_serve)
    with _quiet(log, args.verbose):
        connect()
        try:
            steps.run("teacher report: parse the recorded PaLM 540B outputs", lambda: step_teacher_report(out))
            steps.run("rationales: recorded PaLM teacher through the Ray Data pipeline", lambda: step_replay(out))
            if args.gemma_examples:
                steps.run(f"rationales: live Gemma 3 270M teacher on {args.gemma_examples} examples (CPU)",
                          lambda: step_gemma(out, args.gemma_examples))
            steps.run(f"student: multi-task Gemma 3 270M + LoRA on CQA, {args.steps} steps (Ray Train + "
                      "DeepSpeed, CPU)", lambda: step_train(out, args.steps))
            steps.run("evaluation: label-only on CQA test", lambda: step_eval(out, args.test_limit))
            steps.run("reference: the untrained model, choice scoring", lambda: step_untrained(out, args.test_limit))
            if not args.skip_serve:
                steps.run("serving: Ray Serve on 127.0.0.1, questions over HTTP", lambda: step_serve(out, args.port))
        finally:
            ray.shutdown()
    facts = {k: v for r in steps.rows for k, v in r.items() if k in ("teacher_accuracy", "student_generate",
                                                                       "student_choices", "untrained_choices", "n")}
    say("\n=== summary")
    w = max(len(r["step"]) for r in steps.rows)
    for r in steps.rows:
        say(f"{r['step'].ljust(w)}  {r['seconds']:>6.0f}s")
    if "student_generate" in facts:
        say(f"\nCQA test, {facts['n']} questions, label-only, choice scoring: the student "
            f"{100 * facts['student_choices']:.1f}%, the same model untrained "
            f"{100 * facts.get('untrained_choices', float('nan')):.1f}%; the PaLM 540B teacher "
            f"{100 * facts.get('teacher_accuracy', float('nan')):.1f}%; chance 20.0% (5 choices). Free generation "
            f"{100 * facts['student_generate']:.1f}% (the student reads the question alone: no choices to copy)")
    say(f"wall time {time.time() - steps.t0:.0f}s; everything is under {out}:")
    for r in steps.rows:
        say(f"  {r['written']}")
    (out / "summary.json").write_text(json.dumps({"steps": steps.rows, "accuracy": facts}, indent=2),
                                      encoding="utf-8")
    return 0
