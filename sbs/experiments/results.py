"""Sweep results: one row per finished cell -> tables (mean and standard error over seeds) and plots.

The tables answer the paper's questions: accuracy vs training-data fraction per dataset, one line
per method (its data-size figures), and the methods side by side at each fraction (its ablations).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

CELL_COLUMNS = ["dataset", "method", "fraction", "seed", "test_accuracy", "test_choice_accuracy", "val_accuracy",
                "best_step",
                "train_rows", "test_examples", "test_distinct_predictions", "test_top_prediction_share",
                "train_seconds", "resumed_from_step", "cell"]
METHOD_ORDER = ["standard", "distill", "single_task", "multitask"]
PER_EXAMPLE = "per_example.json"  # cells/<cell>/: {decoding: {example id: correct}}
# the paper's comparisons: multitask against each baseline (standard finetuning, distillation, and
# single-task, its ablation of the rationale as a second task)
PAIRS = (("multitask", "standard"), ("multitask", "distill"), ("multitask", "single_task"))
# two-sided 95% Student t quantiles by degrees of freedom (seeds - 1)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def read_cells(out: Path) -> list[dict[str, Any]]:
    rows = []
    for p in sorted((out / "cells").glob("*/result.json")):
        rows.append(json.loads(p.read_text(encoding="utf-8")))
    return rows


def _mean_se(xs: list[float]) -> tuple[float, float | None]:
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return round(statistics.fmean(xs), 4), None if se is None else round(se, 4)


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard error of test accuracy over seeds, per (dataset, method, fraction); the
    choice-scoring accuracy beside it where the cells have one."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["dataset"], c["method"], float(c["fraction"]))].append(c)
    out = []
    for (ds, m, f), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], _morder(kv[0][1]), kv[0][2])):
        mean, se = _mean_se([float(c["test_accuracy"]) for c in cs])
        row = {"dataset": ds, "method": m, "fraction": f, "seeds": len(cs), "test_accuracy_mean": mean,
               "test_accuracy_se": se}
        choice = [float(c["test_choice_accuracy"]) for c in cs if c.get("test_choice_accuracy") is not None]
        if choice:
            row["test_choice_accuracy_mean"], row["test_choice_accuracy_se"] = _mean_se(choice)
        out.append(row)
    return out


def _per_example(out: Path, cell: str, decoding: str) -> dict[str, bool] | None:
    p = out / "cells" / cell / PER_EXAMPLE
    return json.loads(p.read_text(encoding="utf-8")).get(decoding) if p.is_file() else None


def _paired(pa: list[dict[str, Any]], pb: list[dict[str, Any]], out_a: Path, out_b: Path, decoding: str,
            key: str, rng_key: str, n_boot: int) -> dict[str, Any] | None:
    """Cells `pa` minus cells `pb`, paired by position (one seed each): the mean difference with a
    95% t interval over the pairs, and a paired bootstrap over the test examples both scored.

    Where every cell has its per-example file, both figures are taken on the test examples all of
    them scored (two sweeps may score different test sets, e.g. the first 200 and the whole split);
    without those files, cells that scored different numbers of examples are not compared, and the
    difference is the headline accuracies' (the row then has no "examples")."""
    import random

    if any(c.get(key) is None for c in pa + pb):
        return None
    ex_a = [_per_example(out_a, c["cell"], decoding) for c in pa]
    ex_b = [_per_example(out_b, c["cell"], decoding) for c in pb]
    per_example = all(ex_a) and all(ex_b)
    ids = sorted(set.intersection(*(set(e) for e in ex_a + ex_b))) if per_example else []
    if per_example and not ids:
        return None  # no test example is common to all the cells
    if not per_example and len({c.get("test_examples") for c in pa + pb}) > 1:
        return None  # different test sets and nothing per example to pair them on
    if per_example:
        diffs = [statistics.fmean(float(x[i]) - float(y[i]) for i in ids) for x, y in zip(ex_a, ex_b)]
    else:
        diffs = [float(x[key]) - float(y[key]) for x, y in zip(pa, pb)]
    mean = statistics.fmean(diffs)
    half = (_T975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            if len(diffs) > 1 else None)
    row = {"decoding": decoding, "seeds": len(pa), "mean_diff": round(mean, 4),
           "seed_ci95": None if half is None else [round(mean - half, 4), round(mean + half, 4)]}
    if per_example:
        d = [statistics.fmean(float(e[i]) for e in ex_a) - statistics.fmean(float(e[i]) for e in ex_b)
             for i in ids]
        rng = random.Random(rng_key)
        boots = sorted(statistics.fmean(rng.choices(d, k=len(d))) for _ in range(n_boot))
        row.update({"examples": len(ids), "boot_ci95": [round(boots[int(0.025 * n_boot)], 4),
                                                      round(boots[int(0.975 * n_boot) - 1], 4)],
                    "boot_p_not_better": round(sum(x <= 0 for x in boots) / n_boot, 4)})
    return row


DECODING_KEYS = (("generate", "test_accuracy"), ("choices", "test_choice_accuracy"))


def paired_comparisons(out: Path, cells: list[dict[str, Any]], n_boot: int = 2000) -> list[dict[str, Any]]:
    """Multitask against each baseline (`PAIRS`), per dataset and fraction, on the seeds both ran:
    the mean test-accuracy difference with a 95% t interval over seeds, and a paired bootstrap over
    test examples (each example's correctness averaged over seeds; examples resampled, seeded)."""
    by = {(c["dataset"], c["method"], float(c["fraction"]), c["seed"]): c for c in cells}
    rows = []
    for ds, f in sorted({(c["dataset"], float(c["fraction"])) for c in cells}):
        for a, b in PAIRS:
            seeds = sorted(s for (d, m, fr, s) in by if (d, m, fr) == (ds, a, f) and (ds, b, f, s) in by)
            if not seeds:
                continue
            for decoding, key in DECODING_KEYS:
                row = _paired([by[(ds, a, f, s)] for s in seeds], [by[(ds, b, f, s)] for s in seeds], out, out,
                              decoding, key, f"{ds}-{f}-{a}-{b}-{decoding}", n_boot)
                if row is not None:
                    rows.append({"dataset": ds, "fraction": f, "a": a, "b": b, **row})
    return rows


def compare_sweeps(out_a: Path, out_b: Path, n_boot: int = 2000) -> list[dict[str, Any]]:
    """Sweep `out_a` against sweep `out_b` (e.g. one setting changed): each dataset, method and
    fraction both ran, paired over the seeds both ran, as `paired_comparisons` pairs methods."""
    ca = {(c["dataset"], c["method"], float(c["fraction"]), c["seed"]): c for c in read_cells(out_a)}
    cb = {(c["dataset"], c["method"], float(c["fraction"]), c["seed"]): c for c in read_cells(out_b)}
    rows = []
    for ds, m, f in sorted({k[:3] for k in ca if k in cb}):
        seeds = sorted(k[3] for k in ca if k[:3] == (ds, m, f) and k in cb)
        for decoding, key in DECODING_KEYS:
            row = _paired([ca[(ds, m, f, s)] for s in seeds], [cb[(ds, m, f, s)] for s in seeds], out_a, out_b,
                          decoding, key, f"{ds}-{f}-{m}-{decoding}", n_boot)
            if row is not None:
                rows.append({"dataset": ds, "fraction": f, "a": f"{out_a.name}: {m}", "b": f"{out_b.name}: {m}", **row})
    return rows


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["### paired comparisons (test accuracy, percentage points)", "",
             "Each difference is taken on the test examples every paired cell scored (the examples column).", "",
             "| dataset | fraction | comparison | decoding | seeds | mean diff | 95% CI over seeds | "
             "examples | 95% CI, paired bootstrap | P(diff <= 0) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def ci(v: list[float] | None) -> str:
        return "" if v is None else f"[{100 * v[0]:+.1f}, {100 * v[1]:+.1f}]"

    for r in rows:
        lines.append(f"| {r['dataset']} | {r['fraction']:g} | {r['a']} - {r['b']} | {r['decoding']} | {r['seeds']} | "
                     f"{100 * r['mean_diff']:+.1f} | {ci(r['seed_ci95'])} | {r.get('examples', '')} | "
                     f"{ci(r.get('boot_ci95'))} | {r.get('boot_p_not_better', '')} |")
    lines.append("")
    return "\n".join(lines)


def _morder(m: str) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def _cell_text(s: dict[str, Any]) -> str:
    se = f" ± {100 * s['test_accuracy_se']:.1f}" if s["test_accuracy_se"] is not None else ""
    text = f"{100 * s['test_accuracy_mean']:.1f}{se}"
    if s.get("test_choice_accuracy_mean") is not None:
        cse = s.get("test_choice_accuracy_se")
        text += f" / choices {100 * s['test_choice_accuracy_mean']:.1f}" + (f" ± {100 * cse:.1f}" if cse is not None
                                                                          else "")
    return f"{text} (n={s['seeds']})"


def _by_key(summary: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    return {(s["dataset"], s["method"], s["fraction"]): s for s in summary}


def _cell_or_blank(by: dict[tuple[str, str, float], dict[str, Any]], key: tuple[str, str, float]) -> str:
    return _cell_text(by[key]) if key in by else ""


def ablation_markdown(summary: list[dict[str, Any]]) -> str:
    """The paper's ablation layout: rows = methods, columns = datasets, each at its largest fraction run."""
    by = _by_key(summary)
    datasets = sorted({s["dataset"] for s in summary})
    top = {ds: max(s["fraction"] for s in summary if s["dataset"] == ds) for ds in datasets}
    lines = ["### all datasets, largest training fraction", "",
             "| method | " + " | ".join(f"{ds} ({top[ds]:g} of train)" for ds in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for m in sorted({s["method"] for s in summary}, key=_morder):
        lines.append(f"| {m} | " + " | ".join(_cell_or_blank(by, (ds, m, top[ds])) for ds in datasets) + " |")
    lines.append("")
    return "\n".join(lines)


def comparison_markdown(summary: list[dict[str, Any]]) -> str:
    """The ablation table when there are several datasets, then per dataset: rows = methods,
    columns = fractions, cells = mean ± se (n seeds)."""
    lines: list[str] = [ablation_markdown(summary)] if len({s["dataset"] for s in summary}) > 1 else []
    by = _by_key(summary)
    for ds in sorted({s["dataset"] for s in summary}):
        rows = [s for s in summary if s["dataset"] == ds]
        fracs = sorted({s["fraction"] for s in rows})
        lines += [f"### {ds}", "", "| method | " + " | ".join(f"{f:g} of train" for f in fracs) + " |",
                  "|---|" + "---|" * len(fracs)]
        for m in sorted({s["method"] for s in rows}, key=_morder):
            lines.append(f"| {m} | " + " | ".join(_cell_or_blank(by, (ds, m, f)) for f in fracs) + " |")
        lines.append("")
    return "\n".join(lines)


def write_tables(out: Path, cells: list[dict[str, Any]], baseline: Path | None = None) -> dict[str, Path]:
    summary = summarize(cells)
    paths = {"cells_csv": out / "cells.csv", "results_csv": out / "results.csv", "results_json": out / "results.json",
             "table_md": out / "results.md"}
    with open(paths["cells_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CELL_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(cells, key=lambda c: (c["dataset"], _morder(c["method"]), c["fraction"], c["seed"])))
    with open(paths["results_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]) if summary else ["dataset"])
        w.writeheader()
        w.writerows(summary)
    paired = paired_comparisons(out, cells)
    if baseline is not None:
        if not (baseline / "cells").is_dir():
            raise ValueError(f"baseline: {baseline} holds no sweep cells (cells/*/result.json)")
        paired += compare_sweeps(out, baseline)
    paths["results_json"].write_text(json.dumps({"summary": summary, "paired": paired, "cells": cells}, indent=2),
                                     encoding="utf-8")
    paths["table_md"].write_text(comparison_markdown(summary) + "\n" + paired_markdown(paired), encoding="utf-8")
    return paths


def write_plots(out: Path, summary: list[dict[str, Any]]) -> list[Path]:
    """One PNG per dataset: test accuracy vs fraction of training data, one line per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in sorted({s["dataset"] for s in summary}):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        rows = [s for s in summary if s["dataset"] == ds]
        for m in sorted({s["method"] for s in rows}, key=_morder):
            pts = sorted((s["fraction"], s["test_accuracy_mean"], s["test_accuracy_se"] or 0.0)
                         for s in rows if s["method"] == m)
            xs, ys, es = zip(*pts)
            ax.errorbar([100 * x for x in xs], [100 * y for y in ys], yerr=[100 * e for e in es], marker="o",
                        capsize=3, label=m)
        ax.set_xscale("log", base=2)
        fracs = sorted({100 * s["fraction"] for s in rows})
        ax.set_xticks(fracs, [f"{f:g}" for f in fracs])  # the fractions run, not powers of two
        ax.minorticks_off()
        ax.set_xlabel("% of training data")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds}: accuracy vs training data")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best", framealpha=0.6)
        fig.tight_layout()
        p = out / "plots" / f"{ds}_accuracy_vs_fraction.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths
