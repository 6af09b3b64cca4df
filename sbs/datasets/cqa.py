"""CommonsenseQA v1.11 with CoS-E explanations: 5-way multiple choice.

Student input: the question and its lettered choices (`data.choice_layout`: after, as in the
paper; `before`: "Choices: a, b, ...\nQuestion: <q>"; `none`: "Question: <q>"). Gold label: the
choice text.
Teacher answer form: `... So the answer is (d) math problem.` Scoring accepts the choice
letter or the choice text. Licence: CoS-E BSD-3-Clause; CommonsenseQA per its authors.
"""
from __future__ import annotations

import re
from typing import Any

from sbs.datasets.base import (AMBIGUOUS, NO_ANSWER, OUT_OF_SPACE, Example, InputError, Parsed, ParseResult, Rejected,
                               TaskDataset, normalize_text, split_answer)

LETTERS = "abcdefghij"
_ANSWER = re.compile(r"[Ss]o the answer is[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S)
_ANY_LETTER = re.compile(r"\(([a-jA-J])\)")
_LETTER = re.compile(r"^\(?([a-jA-J])\)(?:\s+(.*))?$|^([a-jA-J])$", re.S)


def _letter_and_text(ans: str) -> tuple[str | None, str]:
    m = _LETTER.match(ans.strip())
    if not m:
        return None, ans.strip()
    letter = (m.group(1) or m.group(3)).lower()
    return letter, (m.group(2) or "").strip()


class Cqa(TaskDataset):
    name = "cqa"
    title = "CommonsenseQA"
    label_space = None  # per example: its own choices
    input_fields = ("question", "choices")
    shipped_splits = ("train", "test")
    hub_path = "cos_e"
    hub_args = ("v1.11",)
    hub_splits = {"train": "train", "test": "validation"}
    exemplar_markers = ("Q:",)
    lists_choices = True
    licence = "CoS-E: BSD-3-Clause; CommonsenseQA: see its authors"

    def _field_ok(self, name: str, value: Any) -> bool:
        return isinstance(value, list) if name == "choices" else isinstance(value, str)

    def check_fields(self, record: Any) -> dict[str, Any]:
        record = super().check_fields(record)
        ch = record["choices"]
        if not 2 <= len(ch) <= len(LETTERS):
            raise InputError(f"cqa: field 'choices' must have 2 to {len(LETTERS)} entries, got {len(ch)}")
        for i, c in enumerate(ch):
            if not isinstance(c, str) or not c.strip():
                raise InputError(f"cqa: field 'choices[{i}]' must be a non-empty string")
        return record

    def candidates(self, fields: dict[str, Any]) -> list[str]:
        return [str(c) for c in fields["choices"]]

    def student_input(self, fields: dict[str, Any]) -> str:
        lines = [str(fields["question"]).strip(), "Answer Choices:"]
        lines += [f"({LETTERS[i]}) {c}" for i, c in enumerate(fields["choices"])]
        return "\n".join(lines)

    def input_without_choices(self, fields: dict[str, Any]) -> str:
        return "Question: " + str(fields["question"]).strip()

    def input_choices_first(self, fields: dict[str, Any]) -> str:
        return "Choices: " + ", ".join(str(c).strip() for c in fields["choices"]) + "\n" + self.input_without_choices(fields)

    def _from_shipped(self, row: dict[str, Any]) -> Example:
        f = {"question": row["question"], "choices": list(row["choices"])}
        return Example(row["id"], self.student_input(f), row["answer"], f, row.get("teacher"))

    def shipped_row(self, paper: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        return {"id": paper["id"], "question": paper["question"], "choices": list(paper["choices"]),
                "answer": paper["answer"], "abstractive_explanation": paper.get("abstractive_explanation") or ""}

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example:
        f = {"question": row["question"], "choices": list(row["choices"])}
        return Example(str(row["id"]), self.student_input(f), str(row["answer"]), f)

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, _ANSWER)
        if sp is None:
            return Rejected(NO_ANSWER, "no 'So the answer is' in the output")
        rationale, ans = sp
        named = {m.lower() for m in _ANY_LETTER.findall(ans)}
        if len(named) > 1:  # "(a) daydream or (c) get ideas": a hedge, not an answer
            return Rejected(AMBIGUOUS, f"answer {ans[:80]!r} names {len(named)} choices")
        letter, choice_text = _letter_and_text(ans)
        if example is None:
            return Parsed(rationale, choice_text or (letter or ""))
        canon = self.normalize_label(ans, example)
        if canon is None:
            return Rejected(OUT_OF_SPACE, f"answer {ans[:80]!r} is none of the choices")
        return Parsed(rationale, canon)

    def normalize_label(self, pred: str, example: Example | None = None) -> str | None:
        """The canonical (normalised) choice text; accepts '(d) text', '(d)', 'd' or the text."""
        if example is None:
            letter, txt = _letter_and_text(pred)
            return normalize_text(txt) if txt else letter
        choices = [normalize_text(c) for c in example.fields["choices"]]
        letter, txt = _letter_and_text(pred)
        if letter is not None:
            idx = LETTERS.index(letter)
            if idx < len(choices):
                return choices[idx]
            return None
        t = normalize_text(txt)
        return t if t in choices else None
