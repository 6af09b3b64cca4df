"""The sweep: tables from cell rows, and resume (a finished cell is never rerun)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sbs.config import ConfigError, load_config
from sbs.experiments import results
from sbs.experiments.sweep import cells, run_sweep
from sbs.experiments.sweep_config import SweepConfig


def _row(method, fraction, seed, acc, ds="svamp"):
    return {"dataset": ds, "method": method, "fraction": fraction, "seed": seed, "test_accuracy": acc,
            "val_accuracy": acc, "best_step": 1, "train_rows": 1, "test_examples": 10, "train_seconds": 1.0,
            "cell": f"{ds}-{method}-{fraction}-{seed}"}


def test_summary_mean_and_standard_error(tmp_path):
    rows = [_row("multitask", 1.0, 0, 0.5), _row("multitask", 1.0, 1, 0.7), _row("standard", 1.0, 0, 0.4),
            _row("standard", 0.5, 0, 0.3)]
    s = {(r["method"], r["fraction"]): r for r in results.summarize(rows)}
    assert s[("multitask", 1.0)]["test_accuracy_mean"] == pytest.approx(0.6)
    assert s[("multitask", 1.0)]["test_accuracy_se"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2), abs=1e-4)
    assert s[("standard", 1.0)]["test_accuracy_se"] is None and s[("standard", 1.0)]["seeds"] == 1
    md = results.comparison_markdown(results.summarize(rows))
    assert "| standard | 30.0 (n=1) | 40.0 (n=1) |" in md and "60.0 ± 10.0 (n=2)" in md
    assert "all datasets" not in md  # one dataset: no cross-dataset table
    two = rows + [_row("multitask", 0.5, 0, 0.2, ds="cqa"), _row("standard", 0.25, 0, 0.9, ds="cqa")]
    ablation = results.comparison_markdown(results.summarize(two)).split("### cqa")[0]
    assert "| method | cqa (0.5 of train) | svamp (1 of train) |" in ablation
    assert "| standard |  | 40.0 (n=1) |" in ablation and "| multitask | 20.0 (n=1) | 60.0 ± 10.0 (n=2) |" in ablation
    paths = results.write_tables(tmp_path, rows)
    assert json.loads(paths["results_json"].read_text())["summary"]
    pngs = results.write_plots(tmp_path, results.summarize(rows))
    assert pngs and pngs[0].read_bytes()[:4] == b"\x89PNG"


def test_paired_comparisons_over_seeds_and_test_examples(tmp_path):
    """Multitask vs standard on 3 seeds and 4 test examples, by hand: per seed, multitask gets
    examples a, b right and standard only a, so every difference is +0.25 (choices: +0.5)."""
    rows = []
    for seed in range(3):
        for method, right, choice_right in (("multitask", "ab", "abc"), ("standard", "a", "a")):
            r = _row(method, 1.0, seed, len(right) / 4, ds="cqa")
            r["test_choice_accuracy"] = len(choice_right) / 4
            rows.append(r)
            d = tmp_path / "cells" / r["cell"]
            d.mkdir(parents=True)
            (d / results.PER_EXAMPLE).write_text(json.dumps(
                {"generate": {i: i in right for i in "abcd"}, "choices": {i: i in choice_right for i in "abcd"}}))
    rows.append(_row("distill", 1.0, 0, 0.1, ds="cqa"))  # one seed, no per-example file: seed stats only
    rows.append(_row("single_task", 1.0, 1, 0.75, ds="cqa"))  # seed 1 only: paired with multitask's seed 1
    pairs = {(p["b"], p["decoding"]): p for p in results.paired_comparisons(tmp_path, rows, n_boot=500)}
    gen = pairs[("standard", "generate")]
    assert (gen["seeds"], gen["mean_diff"], gen["seed_ci95"]) == (3, 0.25, [0.25, 0.25])  # no spread over seeds
    assert gen["examples"] == 4 and gen["boot_ci95"][0] >= 0.0 and gen["boot_ci95"][1] <= 0.75
    assert pairs[("standard", "choices")]["mean_diff"] == 0.5
    d = pairs[("distill", "generate")]
    assert d["seeds"] == 1 and d["seed_ci95"] is None and d["mean_diff"] == pytest.approx(0.4)
    assert ("distill", "choices") not in pairs  # the distill cell has no choice accuracy
    s = pairs[("single_task", "generate")]
    assert s["seeds"] == 1 and s["mean_diff"] == pytest.approx(-0.25) and "examples" not in s  # 0.5 - 0.75
    md = results.paired_markdown(list(pairs.values()))
    assert "| cqa | 1 | multitask - standard | generate | 3 | +25.0 | [+25.0, +25.0] | 4 |" in md


def test_two_sweeps_pair_cell_by_cell_and_the_report_names_a_missing_baseline(tmp_path):
    """Sweep A (one setting changed) against sweep B: same method and seed paired; A's multitask
    gets a, b right where B's gets a alone, on seeds 0 and 1 (B's seed 2 has no partner)."""
    def sweep(name: str, right: str, seeds: range) -> tuple[Path, list[dict]]:
        out, rows = tmp_path / name, []
        for seed in seeds:
            r = _row("multitask", 1.0, seed, len(right) / 4)
            rows.append(r)
            (out / "cells" / r["cell"]).mkdir(parents=True)
            (out / "cells" / r["cell"] / results.PER_EXAMPLE).write_text(
                json.dumps({"generate": {i: i in right for i in "abcd"}}))
        return out, rows

    a, rows_a = sweep("vocab", "ab", range(2))
    b, rows_b = sweep("whole", "a", range(3))
    for out, rows in ((a, rows_a), (b, rows_b)):
        for r in rows:
            (out / "cells" / r["cell"] / "result.json").write_text(json.dumps(r))
    (row,) = results.compare_sweeps(a, b, n_boot=200)
    assert (row["a"], row["b"], row["seeds"], row["mean_diff"]) == ("vocab: multitask", "whole: multitask", 2, 0.25)
    assert row["examples"] == 4 and row["decoding"] == "generate"
    paths = results.write_tables(a, rows_a, baseline=b)
    assert "| svamp | 1 | vocab: multitask - whole: multitask | generate | 2 | +25.0 |" in paths["table_md"].read_text()
    with pytest.raises(ValueError, match="baseline: .* holds no sweep cells"):
        results.write_tables(a, rows_a, baseline=tmp_path / "nowhere")


def test_two_sweeps_on_different_test_sets_pair_on_the_examples_both_scored(tmp_path):
    """Sweep A scored six test examples (a-f), sweep B the first four: A gets a, b, e, f right and B
    gets a. A is at 67% on its six and at 50% on a-d, B at 25%: the difference is taken on a-d alone
    (+25, not +42). Test sets with no example in common, or different test sets without per-example
    files, are not paired."""
    def cell(out: Path, acc: float, n: int, right: str, ids: str | None) -> None:
        r = _row("standard", 1.0, 0, acc, ds="cqa")
        r["test_examples"] = n
        (out / "cells" / r["cell"]).mkdir(parents=True)
        (out / "cells" / r["cell"] / "result.json").write_text(json.dumps(r))
        if ids:
            (out / "cells" / r["cell"] / results.PER_EXAMPLE).write_text(
                json.dumps({"generate": {i: i in right for i in ids}}))

    a, b = tmp_path / "full", tmp_path / "first4"
    cell(a, 4 / 6, 6, "abef", "abcdef")
    cell(b, 1 / 4, 4, "a", "abcd")
    (row,) = results.compare_sweeps(a, b, n_boot=200)
    assert (row["mean_diff"], row["examples"]) == (0.25, 4)
    e = tmp_path / "others"
    cell(e, 1 / 4, 4, "w", "wxyz")
    assert results.compare_sweeps(a, e, n_boot=200) == []
    c, d = tmp_path / "c", tmp_path / "d"
    cell(c, 0.5, 6, "", None)
    cell(d, 0.25, 4, "", None)
    assert results.compare_sweeps(c, d, n_boot=200) == []


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match=r"datasets.0.rationales"):
        load_config(SweepConfig, None, ["name=x", "out=o", "datasets=[{name: svamp}]", "methods=[multitask]"])
    with pytest.raises(ConfigError, match="fractions"):
        load_config(SweepConfig, None, ["name=x", "out=o", "datasets=[{name: svamp}]", "methods=[standard]",
                                        "fractions=[0, 1]"])
    cfg = load_config(SweepConfig, None, ["name=x", "out=o", "datasets=[{name: svamp, rationales: r}]"])
    assert len(cells(cfg)) == 4 * 3 * 2


def test_missing_teacher_output_fails_before_any_cell_starts(tmp_path, monkeypatch):
    """The pre-flight reads every cell's config and the teacher output its method needs: a sweep whose
    rationales dir is empty stops at once, naming the field and the dir (no Ray start, no cell run)."""
    from sbs.experiments import sweep

    monkeypatch.setattr(sweep, "connect", lambda *a, **k: pytest.fail("the sweep joined Ray before failing"))
    cfg = load_config(SweepConfig, None, [
        "name=x", f"out={tmp_path / 'sweep'}", f"datasets=[{{name: svamp, rationales: {tmp_path / 'none'}}}]",
        "methods=[standard, multitask]", "fractions=[1.0]", "seeds=[0]"])
    with pytest.raises(ConfigError, match=r"data.rationales: no .*none/accepted"):
        run_sweep(cfg)
    assert not (tmp_path / "sweep" / "cells").exists()


@pytest.mark.slow
def test_sweep_resumes_without_rerunning_finished_cells(tmp_path, ray_local):
    from sbs.student.recorded import write_accepted

    write_accepted("svamp", "train", tmp_path / "rationales", limit=40)
    cfg = load_config(SweepConfig, None, [
        "name=tiny", f"out={tmp_path / 'sweep'}",
        f"datasets=[{{name: svamp, rationales: {tmp_path / 'rationales'}, test_limit: 4}}]",
        "methods=[standard, multitask]", "fractions=[1.0]", "seeds=[0]",
        "overrides=[model.name=tiny-t5, train.steps=2, train.eval_every=2, train.global_batch=4, "
        "train.micro_batch=4, data.valid_limit=4, data.max_input_length=48, data.max_rationale_length=16, "
        "data.max_label_length=8, train.engine=ddp]"])
    # the dataset has 800 train examples: keep the cell tiny through the fraction of a 40-row table
    first = run_sweep(cfg, max_cells=1)
    assert first["finished_cells"] == 1 and not first["failed_cells"]
    done = next((tmp_path / "sweep" / "cells").glob("*/result.json"))
    stamp = done.stat().st_mtime_ns
    second = run_sweep(cfg)
    assert second["finished_cells"] == 2 and not second["failed_cells"]
    assert done.stat().st_mtime_ns == stamp  # the finished cell was not rerun
    table = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert {c["method"] for c in table["cells"]} == {"standard", "multitask"}
    assert all(0.0 <= c["test_accuracy"] <= 1.0 and c["test_examples"] == 4 for c in table["cells"])
    # fresh cells, not resumed ones: their train_seconds is the whole training
    assert all(json.loads(p.read_text())["resumed_from_step"] is None
               for p in (tmp_path / "sweep" / "cells").glob("*/result.json"))
    assert (tmp_path / "sweep" / "plots" / "svamp_accuracy_vs_fraction.png").is_file()


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).resolve().parents[1]
                                         / "configs" / "sweep").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_config_and_all_its_cells_load(path):
    """The committed sweeps stay runnable: their YAML loads, says how to run it, and every cell's
    student config (base YAML + sweep overrides + cell overrides) passes the student's checks."""
    from sbs.experiments.sweep import student_overrides
    from sbs.student.config import load_train_config

    text = path.read_text(encoding="utf-8")
    assert f"sbs sweep --config configs/sweep/{path.name}" in text, "the YAML must say how to run it"
    cfg = load_config(SweepConfig, str(path), [])
    base = str((path.parent / cfg.student_config).resolve())
    all_cells = cells(cfg)
    assert len(all_cells) == len(cfg.datasets) * len(cfg.methods) * len(cfg.fractions) * len(cfg.seeds)
    for c in all_cells:
        st = load_train_config(base, student_overrides(cfg, c["dataset"], c["method"], c["fraction"], c["seed"],
                                                       c["cell"]))
        assert st.method.name == c["method"] and st.data.fraction == c["fraction"]


def test_committed_results_name_paths_relative_to_the_checkout(monkeypatch, tmp_path):
    from sbs.experiments.sweep import portable

    monkeypatch.chdir(tmp_path)
    assert portable(f"data.rationales={tmp_path}/results/rationales/cqa") == "data.rationales=results/rationales/cqa"
    assert portable("run.storage_path=/elsewhere/runs") == "run.storage_path=/elsewhere/runs"  # outside: kept
    # a script run from elsewhere (teacher_gemma_bench.py from another clone) names its own checkout's root
    assert portable(f"{tmp_path}/co/results/x.json", tmp_path / "co") == "results/x.json"


def test_committed_benchmark_results_name_no_absolute_path():
    results = Path(__file__).resolve().parents[1] / "results"
    for f in [*results.glob("*.json"), *results.glob("*.parts/*.json")]:
        assert '"/' not in f.read_text(encoding="utf-8"), f"{f}: an absolute path"
