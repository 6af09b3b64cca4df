"""`sbs rationales`: the teacher stage from the command line.

    sbs rationales --config configs/teacher/svamp.yaml out=outputs/teacher/svamp-replay
    sbs rationales --config configs/teacher/svamp.yaml backend=hf hf.model=/path/to/causal-lm sampling.k=4 \\
        sampling.temperature=0.7

Rerun the same command after a crash or a kill: committed shards are kept, the rest are redone.
Connects to the Ray cluster in RAY_ADDRESS when set (e.g. under `ray job submit`), otherwise
starts a private local Ray instance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sbs.config import ConfigError, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TeacherConfig YAML (e.g. configs/teacher/svamp.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out=outputs/x sampling.k=4")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray (default: enough "
                   "for the actor pool plus one for reading and parsing)")


def cpus_needed(cfg) -> int:
    """CPUs the stage needs: its actor pool's plus one for reading and parsing (with only the actors',
    the pool's actors and the read tasks wait on each other)."""
    return int(cfg.num_actors * cfg.num_cpus_per_actor + 0.999) + 1


def init_ray(cfg, num_cpus: int | None = None) -> None:
    from sbs.ray_local import connect

    connect(num_cpus=num_cpus or max(os.cpu_count() or 1, cpus_needed(cfg)), log_to_driver=False)


def run(args: argparse.Namespace) -> int:
    from sbs.teacher.config import TeacherConfig
    from sbs.teacher.pipeline import execute

    cfg = load_config(TeacherConfig, args.config, args.overrides)
    init_ray(cfg, args.num_cpus)
    try:
        stats = execute(cfg)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        print(f"sbs rationales: {e}", file=sys.stderr)
        return 1
    brief = {k: stats[k] for k in ("examples_in", "accepted", "rejected", "rejected_by_reason", "teacher_accuracy",
                                   "tokens_in", "tokens_out", "this_run")}
    print(json.dumps(brief, indent=1))
    print(f"wrote {stats['out']}/accepted, /rejects, /stats.json")
    return 0 if stats["counts_add_up"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sbs rationales")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
