"""ANLI round 1 (Nie et al., 2020): adversarial NLI. Licence: CC BY-NC 4.0 (non-commercial).

Teacher answer form: `<rationale> So the answer is contradiction.` Offline, only `valid` and
`test` ship: train on `valid` explicitly and report on `test`.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import Example
from sbs.datasets.nli import NliDataset

_ANSWER = re.compile(r"(?:[Ss]o t|T)he answer is[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S)


class Anli1(NliDataset):
    name = "anli1"
    title = "ANLI (round 1)"
    shipped_splits = ("valid", "test")
    hub_path = "anli"
    hub_splits = {"train": "train_r1", "valid": "dev_r1", "test": "test_r1"}
    answer_pattern = _ANSWER
    answer_marker = "'So the answer is'"
    licence = "CC BY-NC 4.0 (non-commercial use only)"

    def shipped_row(self, paper: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {"id": paper["uid"], "premise": paper["premise"], "hypothesis": paper["hypothesis"],
                "label": int(paper["label"]), "reason": paper.get("reason") or ""}

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        return self._example(str(row["uid"]), row["premise"], row["hypothesis"], int(row["label"]), None)
