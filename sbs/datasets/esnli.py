"""e-SNLI (Camburu et al., 2018): SNLI with human explanations. Licence: MIT.

Teacher answer form: `<rationale>\nAnswer: neutral`. Offline, only `valid` and `test` ship (the
paper's 550k train inputs are on the hub): train on `valid` explicitly and report on `test`.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import NO_ANSWER, OUT_OF_SPACE, Example, Parsed, ParseResult, Rejected, split_answer
from sbs.datasets.nli import NliDataset

_ANSWER = re.compile(r"(?:^|\n)\s*Answer\s*:\s*(?P<ans>.*?)\s*$", re.S)


class Esnli(NliDataset):
    name = "esnli"
    title = "e-SNLI"
    shipped_splits = ("valid", "test")
    hub_path = "esnli"
    hub_splits = {"train": "train", "valid": "validation", "test": "test"}
    licence = "MIT"

    def _from_shipped(self, row: dict[str, Any]) -> Example:
        return self._example(row["id"], row["premise"], row["hypothesis"], row["label"], row.get("teacher"))

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        return self._example(f"esnli-{split}-{index:05d}", row["premise"], row["hypothesis"], int(row["label"]), None)

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, _ANSWER)
        if sp is None:
            return Rejected(NO_ANSWER, "no 'Answer:' line in the output")
        rationale, ans = sp
        label = self.normalize_label(ans)
        if label is None:
            return Rejected(OUT_OF_SPACE, f"answer {ans[:80]!r} is not one of {list(self.label_space)}")
        return Parsed(rationale, label)
