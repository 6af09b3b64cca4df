"""The README's commands and paths are real: every `sbs <stage>` is a stage, every file it names exists,
the set-up commands are exactly the Makefile's `demo` and `test` targets, and every command that
finishes in seconds is run and its output checked against what the README says.

Each `sbs ...` the README shows is in exactly one of RUN, RUN_CHEAPLY or NOT_RUN below, so a new
command in the README fails here until someone decides how it is checked."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sbs.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SBS = Path(sys.executable).with_name("sbs")  # the console script `pip install -e .` puts beside python

# run as shown (they finish in seconds)
RUN = {"sbs --help", "sbs demo --help", "sbs teacher-report --dataset all --split test"}
# run with a flag that keeps them to seconds: --print-config, and --report-only into a copy
RUN_CHEAPLY = {"sbs train --config configs/student/svamp_multitask.yaml",
               "sbs sweep --config configs/sweep/svamp_cqa_2.yaml"}
# minutes to hours (the demo, teacher generation, serving, benchmarks) or a trained export (eval):
# parsed and their configs loaded below; the demo is what `make demo` runs
NOT_RUN = {"sbs demo", "sbs demo --verbose", "sbs rationales --config configs/teacher/svamp.yaml",
           "sbs eval runs/student/svamp-multitask/export --split test",
           "sbs serve --config configs/serve/students.yaml", "sbs bench"}


def _readme_sbs_commands() -> list[str]:
    spans = re.findall(r"`(sbs [^`]+)`", README)
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        spans += [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("sbs ")]
    return spans


def _stage(name: str):
    """The object with add_arguments/run for a stage (COMMANDS holds `module` or `module:attr`)."""
    module, _, attr = COMMANDS[name][0].partition(":")
    m = importlib.import_module(module)
    return getattr(m, attr) if attr else m


def _parse(cmd: str) -> argparse.Namespace:
    argv = shlex.split(cmd)
    p = argparse.ArgumentParser(prog=f"sbs {argv[1]}", exit_on_error=False)
    _stage(argv[1]).add_arguments(p)
    return p.parse_args(argv[2:])


def test_every_readme_command_has_a_check():
    shown = set(_readme_sbs_commands())
    assert shown == RUN | RUN_CHEAPLY | NOT_RUN, (
        f"README commands without a check here: {shown - (RUN | RUN_CHEAPLY | NOT_RUN)}; "
        f"listed here but gone from the README: {(RUN | RUN_CHEAPLY | NOT_RUN) - shown}")


def test_two_setup_commands_are_make_targets():
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", README, re.S)
    assert block, "README must open with the two set-up commands"
    cmds = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert cmds == ["make demo", "make test"]
    assert set(re.findall(r"`make (\w+)`", README)) <= {"demo", "test", "bench"}
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # what each target finally runs (-n: print the recipes, run nothing)
    for target, last in (("demo", ".venv/bin/sbs demo"), ("test", ".venv/bin/python -m pytest tests -q")):
        r = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        final = re.split(r"(?<!\\)\n", r.stdout.strip())[-1]  # the last command, its continued lines joined
        assert last in final, f"make {target}: {r.stdout[-300:]}"
        # a module the main pytest run leaves out runs in a lane of its own, in the same command
        for left_out in re.findall(r"--ignore=([^\s;]+)", final):
            assert f"pytest {left_out}" in final, f"make {target}: {left_out} is ignored and run nowhere"
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


def test_every_sbs_command_in_readme_parses_and_its_config_loads():
    """Each `sbs ...` the README shows parses with its stage's own arguments, and a --config it
    names loads with that stage's typed config (the checks the run itself would do first)."""
    from sbs.config import load_config
    from sbs.experiments.sweep_config import SweepConfig
    from sbs.serve.config import ServeConfig
    from sbs.student.config import StudentTrainConfig
    from sbs.teacher.config import TeacherConfig

    typed = {"rationales": TeacherConfig, "train": StudentTrainConfig, "serve": ServeConfig, "sweep": SweepConfig}
    cmds = [c for c in _readme_sbs_commands() if len(c.split()) > 1 and c.split()[1] in COMMANDS and "--help" not in c]
    assert {"teacher-report", "rationales", "train", "eval", "serve", "sweep"} <= {c.split()[1] for c in cmds}
    for cmd in cmds:
        stage, args = cmd.split()[1], _parse(cmd)
        if stage in typed and getattr(args, "config", None):
            load_config(typed[stage], str(ROOT / args.config), list(getattr(args, "overrides", [])))


def _run(*argv: str) -> str:
    assert SBS.is_file(), f"{SBS}: the sbs console script is not installed (pip install -e .)"
    r = subprocess.run([str(SBS), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"sbs {' '.join(argv)}: rc {r.returncode}\n{r.stderr[-2000:]}"
    return r.stdout


def test_sbs_help_lists_every_stage():
    out = _run(*shlex.split("sbs --help")[1:])
    for name, (_, help_) in COMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(help_[:40])}", out, re.M), f"{name} missing:\n{out}"


def test_sbs_demo_help_lists_the_options_the_readme_names():
    named = re.search(r"`sbs demo --help` lists its options \(([^)]*)\)", README)
    assert named, "README no longer lists the demo's options"
    options = re.findall(r"`(--[\w-]+)`", named.group(1))
    out = _run(*shlex.split("sbs demo --help")[1:])
    assert len(options) >= 5 and all(re.search(rf"^\s+{o} ", out, re.M) for o in options), out


def _readme_report_table() -> dict[str, dict[str, str]]:
    """The README's teacher-report table: dataset -> {column header: cell}."""
    lines = README.split("`sbs teacher-report --dataset all --split test` on the shipped", 1)[1].splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    header, body = rows[0], [r for r in rows[1:] if not set(r[0]) <= {"-"}]
    assert all(len(r) == len(header) for r in body), "a README table row has more or fewer cells than the header"
    return {r[0]: dict(zip(header, r)) for r in body}


def _accuracy(key: str):
    return lambda cell, r: cell == f"{r[key]:.3f}"


def _rejected(cell: str, r: dict) -> bool:
    # "7 (5 unparseable equations such as `(2 * x)`, 2 without an answer)": the total, then per reason
    counts = [int(c) for c in re.findall(r"(?:^\d+ \(|, )(\d+) ", cell)]
    return int(cell.split()[0]) == r["rejected"] and (not counts or sorted(counts) == sorted(r["rejected_by_reason"].values()))


# README column -> how its cell reads against the report's JSON row
REPORT_COLUMNS = {
    "dataset": lambda cell, r: cell == r["dataset"], "split": lambda cell, r: cell == r["split"],
    "examples": lambda cell, r: int(cell) == r["examples"], "parsed": lambda cell, r: int(cell) == r["parsed"],
    "rejected (reason)": _rejected, "teacher accuracy": _accuracy("teacher_accuracy"),
    "paper-rule accuracy": _accuracy("paper_rule_accuracy"),
    "rationale words mean / median":
        lambda cell, r: cell == f"{r['rationale_words_mean']:.1f} / {r['rationale_words_median']:g}",
}


def test_teacher_report_prints_the_readme_table(tmp_path: Path):
    """`sbs teacher-report --dataset all --split test` reproduces every cell of the README's table."""
    table = _readme_report_table()
    assert set(table) == {"anli1", "cqa", "esnli", "svamp"}
    columns = set(next(iter(table.values())))
    assert columns <= set(REPORT_COLUMNS), f"README columns this test cannot check: {columns - set(REPORT_COLUMNS)}"
    out = tmp_path / "report.json"
    text = _run(*shlex.split("sbs teacher-report --dataset all --split test")[1:], "--json", str(out))
    got = {r["dataset"]: r for r in json.loads(out.read_text())}
    assert set(got) == set(table)
    for ds, row in table.items():
        for col, cell in row.items():
            assert REPORT_COLUMNS[col](cell, got[ds]), f"{ds}, {col!r}: README says {cell!r}, the report {got[ds]}"
        r = got[ds]
        assert re.search(rf"^{ds}\s+test\s+{r['examples']}\s+{r['parsed']}\s+{r['rejected']}\s", text, re.M), text


def test_train_command_resolves_the_config_eval_and_serve_use(capsys):
    """`sbs train --config ...` (with --print-config: no Ray, no training) resolves to the typed
    config; the README's `sbs eval` evaluates what it exports, and students.yaml serves that."""
    from sbs.config import load_config
    from sbs.serve.config import ServeConfig
    from sbs.student.config import load_train_config

    (train,) = [c for c in RUN_CHEAPLY if c.startswith("sbs train")]
    assert main([*shlex.split(train)[1:], "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = load_train_config(str(ROOT / _parse(train).config))
    assert type(cfg).model_validate(printed) == cfg
    assert (cfg.data.dataset, cfg.method.name) == ("svamp", "multitask")
    (ev,) = [c for c in NOT_RUN if c.startswith("sbs eval")]
    assert _parse(ev).export_dir == cfg.export_dir() == "runs/student/svamp-multitask/export"
    (serve,) = [c for c in NOT_RUN if c.startswith("sbs serve")]
    students = load_config(ServeConfig, ROOT / _parse(serve).config).students
    assert {s.dataset: s.export_dir for s in students}["svamp"] == cfg.export_dir()


def test_sweep_command_reports_the_committed_sweep(tmp_path: Path, capsys):
    """`sbs sweep --config configs/sweep/svamp_cqa_2.yaml --report-only`, on a copy of the committed
    results: every cell of the config is finished, and the regenerated results table is the committed one."""
    from sbs.config import load_config
    from sbs.experiments.sweep import cells
    from sbs.experiments.sweep_config import SweepConfig

    (sweep,) = [c for c in RUN_CHEAPLY if c.startswith("sbs sweep")]
    cfg = load_config(SweepConfig, ROOT / _parse(sweep).config)
    committed = ROOT / cfg.out
    copy = tmp_path / "sweep"
    shutil.copytree(committed, copy)
    assert main([*shlex.split(sweep)[1:], "--report-only", f"out={copy}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished_cells"] == len(cells(cfg)) == 48
    assert (copy / "results.csv").read_text() == (committed / "results.csv").read_text()
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in summary["plots"]) and len(summary["plots"]) == 2
