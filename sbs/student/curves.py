"""Training curves: every run's per-step metrics as JSONL and a PNG of its losses and validation accuracy.

The history travels inside each checkpoint's state (sbs/student/loop.py), so a run that was
killed and resumed continues one curve. `write_curves` puts `train_metrics.jsonl` and
`train_curves.png` next to the exported model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "train_metrics.jsonl"
CURVES_FILE = "train_curves.png"
LOSS_KEYS = ("loss", "label_loss", "rationale_loss")


def write_curves(history: list[dict[str, Any]], out_dir: Path, title: str = "") -> dict[str, Path]:
    """Write the JSONL (always) and the PNG (when matplotlib is installed: the `demo` extra)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / METRICS_FILE}
    paths["metrics"].write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    try:
        import matplotlib
    except ModuleNotFoundError:
        return paths
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in LOSS_KEYS:
        pts = [(h["step"], h[k]) for h in history if k in h]
        if pts and (k != "label_loss" or any("rationale_loss" in h for h in history)):
            ax.plot(*zip(*pts), label=f"train {k.replace('_', ' ')}", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (rank 0)")
    val = [(h["step"], h["val_accuracy"]) for h in history if "val_accuracy" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="black", label="validation accuracy")
        ax2.set_ylabel("validation accuracy (label task)")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    paths["curves"] = out_dir / CURVES_FILE
    fig.savefig(paths["curves"], dpi=110)
    plt.close(fig)
    return paths


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
