"""`sbs bench` (`make bench`): run every benchmark the stages define, write one JSON.

Each benchmark is a script in benchmarks/ that takes `--json PATH` and writes its figures and
ratios there; this runs them one after another (they measure the machine, so never in parallel)
and merges their results with a description of the machine. Benchmarks report ratios, never
pass/fail thresholds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# name -> (script, extra args for the default run, extra args for --quick)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "teacher_pipeline": ("benchmarks/teacher_bench.py", [], ["--quick"]),
    # Gemma 3 270M + LoRA on CQA: HF's default loss vs sbs's, multitask vs standard (docs/student.md)
    "student_step": ("benchmarks/student_step.py", ["--lora-r", "16", "--max-input", "128", "--max-label", "16",
                                                    "--max-rationale", "96", "--steps", "3"], ["--quick"]),
    "serving": ("benchmarks/serve_load.py", [], ["--quick"]),
    # Gemma 3 270M as the teacher, five ways (transformers loops, the hf and vllm pipelines, bare vLLM)
    "teacher_gemma": ("benchmarks/teacher_gemma_bench.py", [], ["--examples", "16", "--loop-examples", "4",
                                                              "--max-tokens", "16"]),
}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    for mod in ("torch", "ray", "transformers", "deepspeed"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # a missing package is a fact about the machine, not an error here
            info[mod] = None
    import torch

    info["cuda"] = torch.cuda.is_available()
    return info


def run_one(name: str, script: str, args: list[str], timeout_s: float, parts: Path) -> dict[str, Any]:
    """Run one benchmark; its own JSON stays in `parts` (a benchmark that resumes from it, as
    teacher_gemma_bench.py does, continues there after an interrupted run)."""
    parts.mkdir(parents=True, exist_ok=True)
    out = parts / f"{name}.json"
    cmd = [sys.executable, script, "--json", str(out), *args]
    print(f"[sbs bench] {name}: {' '.join(cmd)}", flush=True)
    started, t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.time()
    try:
        proc = subprocess.run(cmd, timeout=timeout_s, text=True)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res: dict[str, Any] = {"command": " ".join([script, *args]), "started": started,
                           "wall_s": round(time.time() - t, 1), "returncode": rc}
    if out.is_file():
        res["results"] = json.loads(out.read_text(encoding="utf-8"))
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/bench.json", help="where the merged JSON goes")
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)")
    p.add_argument("--quick", action="store_true", help="each benchmark's small configuration")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    here = machine()
    report: dict[str, Any] = {"machine": here, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "benchmarks": {}}
    if args.only and out.is_file():
        # a partial run updates the report in place: the other benchmarks keep their figures, each
        # entry with its own start time, and the machine they were taken on when it was another one
        old = json.loads(out.read_text(encoding="utf-8"))
        for name, res in old.get("benchmarks", {}).items():
            if name not in args.only:
                same = old.get("machine") == here
                report["benchmarks"][name] = res if same else {"machine": old.get("machine"), **res}
    failed = []
    for name in args.only or list(BENCHMARKS):
        script, full, quick = BENCHMARKS[name]
        if not Path(script).is_file():
            raise SystemExit(f"sbs bench: {script} not found (run from the repository root)")
        res = run_one(name, script, quick if args.quick else full, args.timeout, out.parent / f"{out.stem}.parts")
        report["benchmarks"][name] = res
        if res["returncode"] != 0 or "results" not in res:
            failed.append(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"[sbs bench] wrote {args.out}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0
