"""Shared pieces of the two NLI datasets (e-SNLI, ANLI): label names, input rendering, parsing.

Each dataset module says how its teacher marks the answer (`answer_pattern`, `answer_marker`);
the cutting of the rationale and the label-space check are the same for both.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import (NO_ANSWER, OUT_OF_SPACE, Example, Parsed, ParseResult, Rejected, TaskDataset,
                               normalize_text, split_answer)

NLI_LABELS = ("entailment", "neutral", "contradiction")  # 0/1/2 as in SNLI/ANLI


class NliDataset(TaskDataset):
    label_space = NLI_LABELS
    input_fields = ("premise", "hypothesis")
    exemplar_markers = ("Premise:",)
    answer_pattern: re.Pattern[str]  # with a named group `ans`
    answer_marker: str  # how the answer is introduced, for the rejection message

    def _from_shipped(self, row: dict[str, Any]) -> Example | None:
        return self._example(row["id"], row["premise"], row["hypothesis"], row["label"], row.get("teacher"))

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, self.answer_pattern)
        if sp is None:
            return Rejected(NO_ANSWER, f"no {self.answer_marker} in the output")
        rationale, ans = sp
        label = self.normalize_label(ans)
        if label is None:
            return Rejected(OUT_OF_SPACE, f"answer {ans[:80]!r} is not one of {list(self.label_space)}")
        return Parsed(rationale, label)

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
