"""`sbs train`: the student stage from the command line.

    sbs train --config configs/student/svamp_multitask.yaml
    sbs train --config configs/student/svamp_standard.yaml model.name=minilm train.steps=300 run.name=svamp-std

Rerun the same command (same run.name and run.storage_path) to resume a stopped run from its
latest checkpoint. Connects to the Ray cluster in RAY_ADDRESS when set (e.g. under
`ray job submit`), otherwise starts a private local Ray with the CPUs the workers need.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sbs.config import dump_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="StudentTrainConfig YAML (e.g. configs/student/svamp_multitask.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 scale.num_workers=2")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def init_ray(cfg) -> None:
    import ray

    from sbs.ray_local import init_local

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    need = cfg.scale.num_workers * cfg.scale.cpus_per_worker + 1  # + one for the Ray Data split coordinator
    init_local(num_cpus=max(need, 2))


def run(args: argparse.Namespace) -> int:
    from sbs.config import ConfigError
    from sbs.student.config import load_train_config

    try:
        return _run(args, load_train_config(args.config, args.overrides))
    except ConfigError as e:  # also raised by data loading (missing rationales, bad split)
        print(f"sbs train: config error:\n{e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, cfg) -> int:
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from sbs.student.trainer import train

    out = train(cfg, init_ray=lambda: init_ray(cfg))
    print(json.dumps({"export_dir": str(out.export_dir), "best": out.best_metrics, "data": out.data_stats,
                      "run_path": out.run_path}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sbs train")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
