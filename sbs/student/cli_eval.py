"""`sbs eval`: label-only evaluation of an exported student; results as JSON.

    sbs eval runs/student/svamp-multitask/export --split test --out outputs/eval/svamp-multitask.json
    sbs eval EXPORT_DIR --split test --explain --limit 50     # also writes the rationales
    sbs eval EXPORT_DIR --split test --decoding choices      # rank the label space / CQA choices

The dataset comes from the export's sbs_meta.json (override with --dataset). Only the label
task runs for the accuracy; --explain additionally generates rationales (multitask/single_task).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="an exported student (save_pretrained + sbs_meta.json)")
    p.add_argument("--split", default="test", help="dataset split to score (default: test)")
    p.add_argument("--dataset", default=None, help="dataset name or YAML (default: the one it was trained on)")
    p.add_argument("--batch-size", type=int, default=32, help="generation batch size")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--explain", action="store_true", help="also generate and write rationales")
    p.add_argument("--decoding", default="generate", choices=["generate", "choices"],
                   help="generate: the label task's greedy output (the paper's metric); choices: the candidate "
                   "label the label task finds most likely (closed label spaces: NLI, CQA choices)")
    p.add_argument("--normalize", action="store_true", help="--decoding choices: rank by mean token "
                   "log-likelihood instead of the sum")
    p.add_argument("--out", default=None, help="write the JSON here (default: <export_dir>/eval-<split>.json)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: leave as set by OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the student runs (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (bfloat16/float16: GPU; default: float32)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sbs.student.evaluate import evaluate, write_results

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        print("sbs eval: --batch-size and --limit must be positive", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sbs eval: --device cuda, but torch sees no CUDA GPU here (use --device cpu)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = evaluate(args.export_dir, split=args.split, dataset=args.dataset, batch_size=args.batch_size,
                       limit=args.limit, explain=args.explain, device=args.device,
                       dtype=getattr(torch, args.dtype), decoding=args.decoding, normalize=args.normalize)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"sbs eval: {e}", file=sys.stderr)
        return 1
    suffix = "" if args.decoding == "generate" else f"-{args.decoding}"
    out = write_results(res, args.out or Path(args.export_dir) / f"eval-{args.split}{suffix}.json")
    brief = {k: res[k] for k in ("dataset", "split", "method", "decoding", "n", "correct", "accuracy", "seconds")}
    print(json.dumps(brief))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sbs eval")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
