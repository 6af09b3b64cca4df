"""The `sbs` command line: one subcommand per stage.

Each stage lives in its own module with `add_arguments(parser)` and `run(args) -> int`
(`module:name` when one module holds several commands, as sbs.student.cli does); this file is
only the table. Modules are imported when their command runs, so `sbs --help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). A plain dict is the registry.
COMMANDS: dict[str, tuple[str, str]] = {
    "teacher-report": ("sbs.teacher_report", "parse the recorded PaLM teacher outputs and report per split"),
    "rationales": ("sbs.teacher.cli", "teacher stage: generate rationales + labels to Parquet (Ray Data)"),
    "train": ("sbs.student.cli:train", "student stage: multi-task / baseline training (Ray Train + DeepSpeed)"),
    "eval": ("sbs.student.cli:eval", "label-only evaluation of an exported student on a split"),
    "serve": ("sbs.serve.cli", "serve an exported student over HTTP (Ray Serve)"),
    "sweep": ("sbs.experiments.sweep", "methods x fractions x seeds x datasets, resumable, with tables and plots"),
    "bench": ("sbs.experiments.bench", "run every benchmark and write one JSON of figures and ratios"),
    "local-cluster": ("sbs.local_cluster", "a multi-node Ray cluster on this machine (head + role nodes), "
                      "node kills for failure drills"),
    "demo": ("sbs.experiments.demo", "the whole pipeline on the embedded CPU default"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs", description="Distilling Step-by-Step on Ray. Stages:")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose one of {', '.join(COMMANDS)}")
    target, help_ = COMMANDS[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            print(f"sbs {name}: this stage is not available in this installation ({module_name} missing)",
                  file=sys.stderr)
            return 2
        raise
    if attr:
        module = getattr(module, attr)
    sp = argparse.ArgumentParser(prog=f"sbs {name}", description=help_)
    module.add_arguments(sp)
    args = sp.parse_args(argv[1:])
    from sbs.config import ConfigError

    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"sbs {name}: config error:\n{e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
