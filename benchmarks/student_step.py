"""Student step cost: multitask vs standard on the same batch, and the share spent in collation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/student_step.py                 # MiniLM, SVAMP, batch 16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/student_step.py --model tiny-t5 --steps 20

One process, no Ray: the same Collator, loss and AdamW as a training worker, on real SVAMP rows
with the recorded PaLM rationales. Prints seconds per step (median of --steps after --warmup),
the collation share of a step, and the ratio multitask / standard (the paper's two-pass
multi-task step costs one extra forward+backward over the rationale targets). Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from sbs.export import ExportMeta
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig
from sbs.student.data import read_accepted
from sbs.student.losses import compute_loss
from sbs.student.models import build_student
from sbs.student.recorded import write_accepted


def svamp_rows(n: int) -> list[dict[str, str]]:
    from sbs.datasets import get_dataset

    with tempfile.TemporaryDirectory() as d:
        write_accepted("svamp", "train", d)
        acc = read_accepted(d)
    ex = [e for e in get_dataset("svamp").load("train") if e.id in acc][:n]
    return [{"id": e.id, "input": e.input, "label": e.label, "rationale": acc[e.id]["rationale"]} for e in ex]


def time_method(model, tok, kind: str, rows, method: str, args) -> dict[str, float]:
    meta = ExportMeta(method=method, dataset="svamp", model_kind=kind, max_input_length=args.max_input,
                      max_label_length=args.max_label, max_rationale_length=args.max_rationale)
    collate = Collator(tok, meta)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    collate_s, step_s = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = collate(rows)
        t1 = time.perf_counter()
        loss, _ = compute_loss(model, batch, method, 1.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= args.warmup:
            collate_s.append(t1 - t0)
            step_s.append(t2 - t0)
    step, col = statistics.median(step_s), statistics.median(collate_s)
    return {"step_s": step, "collate_s": col, "collate_share": col / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="student spec (minilm, tiny-t5, HF name/path)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    p.add_argument("--max-input", type=int, default=128)
    p.add_argument("--max-label", type=int, default=32)
    p.add_argument("--max-rationale", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="tiny-t5, batch 8, 3 steps: checks the script, not the machine")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.quick:
        args.model, args.batch, args.steps = "tiny-t5", 8, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, kind = build_student(ModelConfig(name=args.model))
    rows = svamp_rows(args.batch)
    res = {m: time_method(model, tok, kind, rows, m, args) for m in ("standard", "multitask")}
    out = {"model": args.model, "batch": args.batch, "threads": torch.get_num_threads(), "steps": args.steps,
           **{f"{m}_{k}": round(v, 4) for m, r in res.items() for k, v in r.items()},
           "ratio_multitask_over_standard": round(res["multitask"]["step_s"] / res["standard"]["step_s"], 3)}
    for m, r in res.items():
        print(f"{m:9s}: {r['step_s']:.3f} s/step, collation {r['collate_s'] * 1000:.1f} ms "
              f"({100 * r['collate_share']:.1f}% of the step)")
    print(f"multitask / standard step time: {out['ratio_multitask_over_standard']:.2f}x")
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
