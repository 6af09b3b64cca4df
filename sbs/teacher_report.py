"""`sbs teacher-report`: read the recorded PaLM 540B outputs and report how they parse.

Per split: examples, parsed, rejected by reason, teacher label accuracy against gold (over all
examples: a rejected output counts as wrong), and rationale length in words (mean/median).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from typing import Any

from sbs.datasets import get_dataset


def report(dataset: str, split: str, limit: int | None = None) -> dict[str, Any]:
    ds = get_dataset(dataset)
    examples = ds.load(split, limit=limit)
    rejected: Counter[str] = Counter()
    correct = parsed = 0
    words: list[int] = []
    for ex in examples:
        if ex.teacher is None:
            raise ValueError(f"{dataset}/{split}: no recorded teacher output for {ex.id}")
        res = ds.parse(ex.teacher, ex)
        if not res.ok:
            rejected[res.reason] += 1
            continue
        parsed += 1
        correct += ds.score(res.label, ex)
        words.append(len(res.rationale.split()))
    n = len(examples)
    return {
        "dataset": dataset, "split": split, "examples": n, "parsed": parsed,
        "rejected": sum(rejected.values()), "rejected_by_reason": dict(sorted(rejected.items())),
        "teacher_accuracy": round(correct / n, 4) if n else 0.0,
        "teacher_accuracy_on_parsed": round(correct / parsed, 4) if parsed else 0.0,
        "rationale_words_mean": round(statistics.fmean(words), 1) if words else 0.0,
        "rationale_words_median": statistics.median(words) if words else 0,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ["dataset", "split", "examples", "parsed", "rejected", "teacher_accuracy", "rationale_words_mean",
            "rationale_words_median"]
    head = ["dataset", "split", "examples", "parsed", "rejected", "teacher acc", "words mean", "words median"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda xs: "  ".join(x.rjust(w) if i > 1 else x.ljust(w) for i, (x, w) in enumerate(zip(xs, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(c) for c in cells]
    for r in rows:
        if r["rejected_by_reason"]:
            why = ", ".join(f"{k}={v}" for k, v in r["rejected_by_reason"].items())
            out.append(f"  {r['dataset']}/{r['split']} rejected: {why}")
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", action="append", required=True,
                   help="dataset name (svamp, cqa, esnli, anli1) or 'all'; repeatable")
    p.add_argument("--split", action="append", help="split(s); default: every shipped split")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples of each split")
    p.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON here ('-': stdout)")


def run(args: argparse.Namespace) -> int:
    from sbs.datasets import DATASETS

    names = sorted(DATASETS) if "all" in args.dataset else args.dataset
    rows = []
    for name in names:
        try:
            ds = get_dataset(name)
            splits = args.split or list(ds.splits())
            for split in splits:
                rows.append(report(name, split, args.limit))
        except (KeyError, ValueError) as e:
            print(f"sbs teacher-report: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2
    print(format_table(rows))
    if args.json_path == "-":
        print(json.dumps(rows, indent=2))
    elif args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0
