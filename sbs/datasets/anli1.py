"""ANLI round 1 (Nie et al., 2020): adversarial NLI. Licence: CC BY-NC 4.0 (non-commercial).

Teacher answer form: `<rationale> So the answer is contradiction.` Offline, only `valid` and
`test` ship: train on `valid` explicitly and report on `test`.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import NO_ANSWER, OUT_OF_SPACE, Example, Parsed, ParseResult, Rejected, split_answer
from sbs.datasets.nli import NliDataset

_ANSWER = re.compile(r"(?:[Ss]o t|T)he answer is[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S)


class Anli1(NliDataset):
    name = "anli1"
    title = "ANLI (round 1)"
    shipped_splits = ("valid", "test")
    hub_path = "anli"
    hub_splits = {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}
    licence = "CC BY-NC 4.0 (non-commercial use only)"

    def _from_shipped(self, row: dict[str, Any]) -> Example:
        return self._example(row["id"], row["premise"], row["hypothesis"], row["label"], row.get("teacher"))

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        return self._example(str(row["uid"]), row["premise"], row["hypothesis"], int(row["label"]), None)

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, _ANSWER)
        if sp is None:
            return Rejected(NO_ANSWER, "no 'So the answer is' in the output")
        rationale, ans = sp
        label = self.normalize_label(ans)
        if label is None:
            return Rejected(OUT_OF_SPACE, f"answer {ans[:80]!r} is not one of {list(self.label_space)}")
        return Parsed(rationale, label)
