"""e-SNLI (Camburu et al., 2018): SNLI with human explanations. Licence: MIT.

Teacher answer form: `<rationale>\nAnswer: neutral`. Offline, only `valid` and `test` ship (the
paper's 550k train inputs are on the hub): train on `valid` explicitly and report on `test`.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import Example
from sbs.datasets.nli import NliDataset

_ANSWER = re.compile(r"(?:^|\n)\s*Answer\s*:\s*(?P<ans>.*?)\s*$", re.S)


class Esnli(NliDataset):
    name = "esnli"
    title = "e-SNLI"
    shipped_splits = ("valid", "test")
    hub_path = "esnli"
    hub_splits = {"train": "train", "valid": "validation", "test": "test"}
    answer_pattern = _ANSWER
    answer_marker = "'Answer:' line"
    licence = "MIT"

    def shipped_row(self, paper: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {"id": f"esnli-{split}-{index:05d}", "premise": paper["premise"], "hypothesis": paper["hypothesis"],
                "label": int(paper["label"]), "explanation_1": paper.get("explanation_1") or ""}

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        return self._example(f"esnli-{split}-{index:05d}", row["premise"], row["hypothesis"], int(row["label"]), None)
