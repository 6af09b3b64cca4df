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

CELL_COLUMNS = ["dataset", "method", "fraction", "seed", "test_accuracy", "val_accuracy", "best_step",
                "train_rows", "test_examples", "test_distinct_predictions", "test_top_prediction_share",
                "train_seconds", "resumed_from_step", "cell"]
METHOD_ORDER = ["standard", "distill", "single_task", "multitask"]


def read_cells(out: Path) -> list[dict[str, Any]]:
    rows = []
    for p in sorted((out / "cells").glob("*/result.json")):
        rows.append(json.loads(p.read_text(encoding="utf-8")))
    return rows


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard error of test accuracy over seeds, per (dataset, method, fraction)."""
    groups: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for c in cells:
        groups[(c["dataset"], c["method"], float(c["fraction"]))].append(float(c["test_accuracy"]))
    out = []
    for (ds, m, f), accs in sorted(groups.items(), key=lambda kv: (kv[0][0], _morder(kv[0][1]), kv[0][2])):
        se = statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        out.append({"dataset": ds, "method": m, "fraction": f, "seeds": len(accs),
                    "test_accuracy_mean": round(statistics.fmean(accs), 4),
                    "test_accuracy_se": None if math.isnan(se) else round(se, 4)})
    return out


def _morder(m: str) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def _cell_text(s: dict[str, Any]) -> str:
    se = f" ± {100 * s['test_accuracy_se']:.1f}" if s["test_accuracy_se"] is not None else ""
    return f"{100 * s['test_accuracy_mean']:.1f}{se} (n={s['seeds']})"


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


def write_tables(out: Path, cells: list[dict[str, Any]]) -> dict[str, Path]:
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
    paths["results_json"].write_text(json.dumps({"summary": summary, "cells": cells}, indent=2), encoding="utf-8")
    paths["table_md"].write_text(comparison_markdown(summary), encoding="utf-8")
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
