"""SVAMP (Patel et al., 2021): arithmetic word problems; the label is an equation.

Student input: the problem text. Teacher answer form: `... The answer is (84 / 2).`
Scoring: numeric equality of the *evaluated* equations (safe evaluator, never `eval`).
Licence: MIT.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.arith import same_value, try_evaluate
from sbs.datasets.base import BAD_EQUATION, NO_ANSWER, Example, Parsed, ParseResult, Rejected, TaskDataset, split_answer

_ANSWER = re.compile(r"[Tt]he answer is[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S)


class Svamp(TaskDataset):
    name = "svamp"
    title = "SVAMP"
    label_space = None
    input_fields = ("problem",)
    shipped_splits = ("train", "test")
    hub_path = "ChilleD/SVAMP"
    hub_splits = {"train": "train", "test": "test"}
    exemplar_markers = ("Q:",)
    licence = "MIT"

    def student_input(self, fields: dict[str, Any]) -> str:
        return str(fields["problem"]).strip()

    def _from_shipped(self, row: dict[str, Any]) -> Example:
        f = {"problem": row["problem"]}
        return Example(row["id"], self.student_input(f), row["label"], f, row.get("teacher"))

    def shipped_row(self, paper: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {"id": f"svamp-{split}-{index:05d}", "problem": paper["input"], "label": paper["label"]}

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        body, q = str(row["Body"]).strip(), str(row["Question"]).strip()
        f = {"problem": f"{body}\n{q}" if body else q}
        rid = str(row.get("ID") or f"svamp-{split}-{index:05d}")
        return Example(rid, self.student_input(f), str(row["Equation"]).strip(), f)

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, _ANSWER)
        if sp is None:
            return Rejected(NO_ANSWER, "no 'The answer is' in the output")
        rationale, ans = sp
        if try_evaluate(ans) is None:
            return Rejected(BAD_EQUATION, f"answer {ans[:80]!r} is not an arithmetic expression")
        return Parsed(rationale, ans)

    def normalize_label(self, pred: str, example: Example | None = None) -> str | None:
        v = try_evaluate(pred)
        return None if v is None else repr(v)

    def score(self, pred: Any, example: Example) -> bool:
        return same_value(pred, example.label)
