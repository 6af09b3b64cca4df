"""Shared pieces of the two NLI datasets (e-SNLI, ANLI): label names and input rendering."""
from __future__ import annotations

from typing import Any

from sbs.datasets.base import Example, TaskDataset, normalize_text

NLI_LABELS = ("entailment", "neutral", "contradiction")  # 0/1/2 as in SNLI/ANLI


class NliDataset(TaskDataset):
    label_space = NLI_LABELS
    input_fields = ("premise", "hypothesis")
    exemplar_markers = ("Premise:",)

    def student_input(self, fields: dict[str, Any]) -> str:
        return f"Premise: {str(fields['premise']).strip()}\nHypothesis: {str(fields['hypothesis']).strip()}"

    def _example(self, rid: str, premise: str, hypothesis: str, label: int, teacher: str | None) -> Example | None:
        if label not in (0, 1, 2):  # the hub marks unlabelled pairs with -1
            return None
        f = {"premise": premise, "hypothesis": hypothesis}
        return Example(rid, self.student_input(f), NLI_LABELS[label], f, teacher)

    def normalize_label(self, pred: str, example: Example | None = None) -> str | None:
        p = normalize_text(pred)
        return p if p in NLI_LABELS else None
