"""How well an untrained causal LM ranks CQA's choices in each student-input layout.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/choice_layouts.py                 # Gemma 3 270M, first 200 test questions
    OMP_NUM_THREADS=2 .venv/bin/python scripts/choice_layouts.py --limit 1221 --json out.json

For every `data.choice_layout` (after: the paper's lettered list after the question; before:
"Choices: a, b, ...\\nQuestion: <q>"; none: "Question: <q>") it scores the untrained model by choice
scoring (summed log-likelihood of each choice after "\\nAnswer:", `sbs eval --decoding choices`'s
path). The layout a pretrained student ranks best in before training is the one its prior helps
most in (docs/student.md, "What the student reads").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import get_args

from sbs.datasets import get_dataset
from sbs.datasets.base import ChoiceLayout
from sbs.predict import Student
from sbs.student.evaluate import evaluate, untrained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m", help="a causal student name (default: gemma3-270m)")
    p.add_argument("--dataset", default="cqa", help="a dataset whose input lists its choices (default: cqa)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=200, help="the first N examples (default: 200)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    try:
        ds = get_dataset(args.dataset)
    except KeyError as e:
        p.error(f"--dataset: {e.args[0]}")
    if not ds.lists_choices:
        p.error(f"--dataset: {ds.name}'s student input lists no answer choices (only datasets with per-example "
                "choices, e.g. cqa)")
    out = {}
    base = untrained(args.model, args.dataset)  # one model; only the meta's layout changes per run
    for layout in get_args(ChoiceLayout):
        t0 = time.time()
        student = Student(base.model, base.tok, base.meta.model_copy(update={"choice_layout": layout}))
        res = evaluate(f"untrained:{args.model}", split=args.split, limit=args.limit, decoding="choices",
                       student=student)
        out[layout] = {"accuracy": res["accuracy"], "n": res["n"], "seconds": round(time.time() - t0, 1)}
        print(f"{layout:>6}: {res['correct']}/{res['n']} = {100 * res['accuracy']:.1f}%", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "dataset": args.dataset, "split": args.split, "layouts": out}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
