"""The README's commands and paths are real: every `sbs <stage>` is a stage, every file it names exists,
and the set-up commands are exactly the Makefile's `demo` and `test` targets."""
from __future__ import annotations

import re
from pathlib import Path

from sbs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_two_setup_commands_are_make_targets():
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", README, re.S)
    assert block, "README must open with the two set-up commands"
    cmds = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert cmds == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile lacks the {target} target"
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_sbs_stages_in_readme_exist():
    used = set(re.findall(r"`sbs ([a-z][a-z-]*)", README))
    assert used, "README names no sbs stage"
    assert used <= set(COMMANDS), f"README names unknown stages: {used - set(COMMANDS)}"


def test_paths_in_readme_exist():
    paths = set(re.findall(r"(?<![\w/.])((?:configs|jobs|cluster|docs|scripts|benchmarks|sbs|tests)/[\w./-]+\.(?:ya?ml|py|md|sh))", README))
    paths |= set(re.findall(r"\]\(((?:docs|results)/[^)#]+)\)", README))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def _readme_sbs_commands() -> list[list[str]]:
    import shlex

    spans = re.findall(r"`(sbs [^`]+)`", README)
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        spans += [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("sbs ")]
    return [shlex.split(s) for s in spans]


def test_every_sbs_command_in_readme_parses_and_its_config_loads():
    """Each `sbs ...` the README shows parses with its stage's own arguments, and a --config it
    names loads with that stage's typed config (the checks the run itself would do first)."""
    import argparse
    import importlib

    from sbs.config import load_config
    from sbs.experiments.sweep_config import SweepConfig
    from sbs.serve.config import ServeConfig
    from sbs.student.config import StudentTrainConfig
    from sbs.teacher.config import TeacherConfig

    typed = {"rationales": TeacherConfig, "train": StudentTrainConfig, "serve": ServeConfig, "sweep": SweepConfig}
    cmds = [c for c in _readme_sbs_commands() if len(c) > 1 and c[1] in COMMANDS and "--help" not in c]
    assert {"teacher-report", "rationales", "train", "eval", "serve", "sweep"} <= {c[1] for c in cmds}
    for argv in cmds:
        stage = argv[1]
        p = argparse.ArgumentParser(prog=f"sbs {stage}", exit_on_error=False)
        importlib.import_module(COMMANDS[stage][0]).add_arguments(p)
        args = p.parse_args(argv[2:])
        if stage in typed and getattr(args, "config", None):
            load_config(typed[stage], str(ROOT / args.config), list(getattr(args, "overrides", [])))
