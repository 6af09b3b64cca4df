"""The student stage's two commands: `sbs train` and `sbs eval` (`train.add_arguments/run`,
`eval.add_arguments/run`; sbs/cli.py names them `sbs.student.cli:train` and `:eval`).

    sbs train --config configs/student/svamp_multitask.yaml
    sbs train --config configs/student/svamp_standard.yaml model.name=minilm train.steps=300 run.name=svamp-std
    sbs eval runs/student/svamp-multitask/export --split test --out outputs/eval/svamp-multitask.json
    sbs eval EXPORT_DIR --split test --explain --limit 50     # also writes the rationales
    sbs eval EXPORT_DIR --split test --decoding choices      # rank the label space / CQA choices

Train: rerun the same command (same run.name and run.storage_path) to resume a stopped run from
its latest checkpoint. It joins the Ray cluster in RAY_ADDRESS when set (e.g. under `ray job
submit`), otherwise starts a private local Ray with the CPUs the workers need (sbs.ray_local).
Eval: the dataset comes from the export's sbs_meta.json (override with --dataset). Only the
label task runs for the accuracy; --explain additionally generates rationales.
"""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

from sbs.config import dump_config


# ---- sbs train ---------------------------------------------------------------------------

def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="StudentTrainConfig YAML (e.g. configs/student/svamp_multitask.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 scale.num_workers=2")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _train(args: argparse.Namespace) -> int:
    from sbs.config import ConfigError
    from sbs.student.config import load_train_config

    try:
        return _train_run(args, load_train_config(args.config, args.overrides))
    except ConfigError as e:  # also raised by data loading (missing rationales, bad split)
        print(f"sbs train: config error:\n{e}", file=sys.stderr)
        return 2


def _train_run(args: argparse.Namespace, cfg) -> int:
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from sbs.student import trainer

    out = trainer.train(cfg)
    print(json.dumps({"export_dir": str(out.export_dir), "best": out.best_metrics, "data": out.data_stats,
                      "run_path": out.run_path}, indent=1, default=str))
    return 0


# ---- sbs eval ----------------------------------------------------------------------------

def _eval_arguments(p: argparse.ArgumentParser) -> None:
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


def _eval(args: argparse.Namespace) -> int:
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


train = SimpleNamespace(add_arguments=_train_arguments, run=_train)
eval = SimpleNamespace(add_arguments=_eval_arguments, run=_eval)  # noqa: A001 (the command's name)
