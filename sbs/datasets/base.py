"""The dataset interface: every dataset is one small module implementing `TaskDataset`.

A dataset knows how to load a split as `Example`s with stable ids, render the student input from
its own fields, parse a teacher continuation into (rationale, label) or a rejection with a
reason, and score a predicted label against gold. Parsers and scorers never raise on any string.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal

import pyarrow as pa
import pyarrow.parquet as pq

# Cut-offs for teacher text: a continuation longer than this (after cutting at the next invented
# exemplar) is rejected as runaway generation rather than parsed.
MAX_RATIONALE_CHARS = 4000

# Rejection reasons (stable strings: they are column values in the teacher stage's rejects table).
EMPTY = "empty_output"
NO_ANSWER = "no_answer_marker"
OUT_OF_SPACE = "label_not_in_label_space"
EMPTY_RATIONALE = "empty_rationale"
BAD_EQUATION = "unparseable_equation"
TOO_LONG = "too_long"
NOT_TEXT = "not_text"
AMBIGUOUS = "ambiguous_answer"  # the answer names two or more choices ("(a) x or (c) y")

# Where a student input that lists answer choices (CQA) puts them: after the question (the paper's
# layout), before it, or nowhere (the question alone). TaskDataset.student_text renders each.
ChoiceLayout = Literal["after", "before", "none"]


@dataclass(frozen=True)
class Example:
    id: str
    input: str  # the student input text
    label: str  # gold label, canonical string form
    fields: dict[str, Any] = field(default_factory=dict)  # the dataset's own input fields
    teacher: str | None = None  # recorded raw teacher continuation, when shipped

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "input": self.input, "label": self.label, "teacher": self.teacher, **{
            f"field_{k}": v for k, v in self.fields.items()}}


@dataclass(frozen=True)
class Parsed:
    rationale: str
    label: str
    ok: ClassVar[bool] = True


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str = ""
    ok: ClassVar[bool] = False


ParseResult = Parsed | Rejected


class SplitUnavailable(ValueError):
    pass


class InputError(ValueError):
    """A user/request record that cannot be turned into a student input (names the field)."""


def text_problem(value: str) -> str | None:
    """Why a string cannot reach a tokenizer, or None: lone surrogates (valid JSON, "\\ud800", but
    not Unicode text) make every tokenizer raise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode text (a lone surrogate at character {e.start})"
    return None


def normalize_text(s: str) -> str:
    """Case, whitespace and trailing-period insensitive form used for label matching."""
    s = re.sub(r"\s+", " ", str(s)).strip().lower()
    return s.rstrip(".").strip().strip('"').strip("'").strip()


def cut_continuation(text: str, markers: Iterable[str]) -> str:
    """Cut a recorded continuation where the teacher starts inventing the next exemplar."""
    cut = len(text)
    i = text.find("\n\n")
    if i >= 0:
        cut = i
    for m in markers:
        j = text.find("\n" + m)
        if 0 <= j < cut:
            cut = j
    return text[:cut].strip()


def data_dir() -> Path:
    return Path(str(resources.files("sbs") / "data"))


@lru_cache(maxsize=32)
def _read_shipped(name: str, split: str) -> pa.Table:
    return pq.read_table(data_dir() / name / f"{split}.parquet")


class TaskDataset:
    """Base class; subclasses set the class attributes and implement the four hooks."""

    name: ClassVar[str]
    title: ClassVar[str]
    label_space: ClassVar[tuple[str, ...] | None] = None  # None: open answer (e.g. an equation)
    input_fields: ClassVar[tuple[str, ...]]  # fields a user record must carry
    shipped_splits: ClassVar[tuple[str, ...]]
    hub_splits: ClassVar[dict[str, str]] = {}  # our split name -> hub split name
    exemplar_markers: ClassVar[tuple[str, ...]] = ("Q:",)
    licence: ClassVar[str] = ""
    lists_choices: ClassVar[bool] = False  # the student input lists each example's answer choices (CQA)

    # ---- hooks -------------------------------------------------------------------------------
    def student_input(self, fields: dict[str, Any]) -> str:
        raise NotImplementedError

    def input_without_choices(self, fields: dict[str, Any]) -> str:
        """The student input with its answer choices left out (datasets that list them)."""
        raise NotImplementedError

    def input_choices_first(self, fields: dict[str, Any]) -> str:
        """The student input with its answer choices listed before the question (datasets that list them)."""
        raise NotImplementedError

    def _from_shipped(self, row: dict[str, Any]) -> Example:
        raise NotImplementedError

    def _from_hub(self, row: dict[str, Any], split: str, index: int) -> Example | None:
        raise NotImplementedError

    def shipped_row(self, paper: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        """The shipped Parquet row (what `_from_shipped` reads back) for one row of the paper's
        released JSON files; scripts/build_data.py adds the recorded `teacher` column."""
        raise NotImplementedError

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        raise NotImplementedError

    def normalize_label(self, pred: str, example: Example | None = None) -> str | None:
        """Canonical form of a predicted label, or None when it is not a valid answer."""
        if self.label_space is None:
            raise NotImplementedError
        p = normalize_text(pred)
        return p if p in self.label_space else None

    def candidates(self, fields: dict[str, Any]) -> list[str] | None:
        """The closed set of answers for one example (choice decoding ranks them), or None for an
        open answer. Fixed label spaces by default; datasets with per-example choices override."""
        return list(self.label_space) if self.label_space else None

    # ---- shared behaviour --------------------------------------------------------------------
    def check_fields(self, record: Any) -> dict[str, Any]:
        """Validate a user record's fields; InputError names the missing/extra/bad field."""
        if not isinstance(record, dict):
            raise InputError(f"{self.name}: expected an object with fields {list(self.input_fields)}")
        missing = [f for f in self.input_fields if f not in record]
        if missing:
            raise InputError(f"{self.name}: missing field(s) {missing}; expected {list(self.input_fields)}")
        extra = [f for f in record if f not in self.input_fields]
        if extra:
            raise InputError(f"{self.name}: unknown field(s) {extra}; expected {list(self.input_fields)}")
        for f in self.input_fields:
            v = record[f]
            if not self._field_ok(f, v):
                raise InputError(f"{self.name}: field '{f}' has the wrong type ({type(v).__name__})")
            if isinstance(v, str) and not v.strip():
                raise InputError(f"{self.name}: field '{f}' is empty")
            for i, t in enumerate(v if isinstance(v, list) else [v]):
                why = text_problem(t) if isinstance(t, str) else None
                if why:
                    raise InputError(f"{self.name}: field '{f}{f'[{i}]' if isinstance(v, list) else ''}' {why}")
        return record

    def _field_ok(self, name: str, value: Any) -> bool:
        """Type check of one input field; text by default."""
        return isinstance(value, str)

    def format_input(self, record: dict[str, Any], layout: ChoiceLayout = "after") -> str:
        return self.student_text(self.check_fields(record), layout)

    def student_text(self, fields: dict[str, Any], layout: ChoiceLayout = "after") -> str:
        """What a student reads for these fields (training, validation, eval and serving alike).
        Datasets whose input lists answer choices (CQA) have three layouts: `after` the question
        (the paper's), `before` it (the question then sits right before the answer, where a
        pretrained causal LM's own prior ranks the choices as well as with the question alone),
        or `none` (the question alone: choice scoring only, free generation has nothing to copy)."""
        if layout == "after":
            return self.student_input(fields)
        if not self.lists_choices:
            raise ValueError(f"choice_layout={layout}: {self.name}'s student input lists no answer choices")
        return self.input_without_choices(fields) if layout == "none" else self.input_choices_first(fields)

    def splits(self) -> tuple[str, ...]:
        return self.shipped_splits

    def load(self, split: str, source: str = "shipped", limit: int | None = None, **hub_kwargs: Any) -> list[Example]:
        """Load a split. `source="shipped"` reads the Parquet inside the package (offline);
        `source="hub"` reads the full dataset from the Hugging Face hub (needs network, or a
        local `path=`/`data_files=` in the hub format)."""
        if source == "hub":
            return self.load_hub(split, limit=limit, **hub_kwargs)
        if source != "shipped":
            raise ValueError(f"source: unknown {source!r}; choose 'shipped' or 'hub'")
        if split not in self.shipped_splits:
            hint = ""
            if split == "train" and "valid" in self.shipped_splits:
                hint = (f" The {self.title} train split is not shipped offline: train on 'valid' explicitly"
                        f" (train_split: valid, and report on test), or use source='hub' with network.")
            raise SplitUnavailable(
                f"{self.name}: split {split!r} is not available offline; shipped splits: "
                f"{list(self.shipped_splits)}.{hint}")
        table = _read_shipped(self.name, split)
        if limit is not None:
            table = table.slice(0, limit)
        return [self._from_shipped(r) for r in table.to_pylist()]

    def load_hub(self, split: str, limit: int | None = None, path: str | None = None,
                 data_files: Any = None, **kwargs: Any) -> list[Example]:
        import datasets as hf  # heavy import; only when asked for

        hub_split = self.hub_splits.get(split)
        if hub_split is None:
            raise SplitUnavailable(f"{self.name}: hub split for {split!r} unknown; known: {list(self.hub_splits)}")
        if data_files is not None:  # local files in the hub's format (tests, mirrors)
            ds = hf.load_dataset(path or "json", data_files=data_files, split="train")
        else:
            ds = hf.load_dataset(path or self.hub_path, *self.hub_args, split=hub_split, **kwargs)
        out: list[Example] = []
        for i, row in enumerate(ds):
            if limit is not None and len(out) >= limit:
                break
            ex = self._from_hub(row, split, i)
            if ex is not None:
                out.append(ex)
        return out

    hub_path: ClassVar[str] = ""
    hub_args: ClassVar[tuple[str, ...]] = ()

    def parse(self, text: Any, example: Example | None = None) -> ParseResult:
        """(rationale, label) from a teacher continuation, or a rejection. Never raises."""
        if not isinstance(text, str):
            return Rejected(NOT_TEXT, f"teacher output is {type(text).__name__}, not text")
        if not text.strip():
            return Rejected(EMPTY, "teacher output is empty")
        cut = cut_continuation(text, self.exemplar_markers)
        if len(cut) > MAX_RATIONALE_CHARS:
            return Rejected(TOO_LONG, f"{len(cut)} characters after cutting (limit {MAX_RATIONALE_CHARS})")
        try:
            res = self._parse_cut(cut, example)
        except Exception as e:  # a parser bug must not kill a 550k-row job: reject and say why
            return Rejected("parser_error", f"{type(e).__name__}: {e}")
        if res.ok and not res.rationale.strip():
            return Rejected(EMPTY_RATIONALE, "answer found but no rationale before it")
        return res

    def score(self, pred: Any, example: Example) -> bool:
        """Whether a predicted label matches gold. Never raises; malformed predictions are wrong."""
        if not isinstance(pred, str):
            return False
        try:
            canon = self.normalize_label(pred, example)
        except Exception:
            return False
        return canon is not None and canon == self.normalize_label(example.label, example)


def split_answer(text: str, pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """Split `text` at the LAST match of `pattern` (group 'ans'): (rationale before, answer)."""
    last = None
    for m in pattern.finditer(text):
        last = m
    if last is None:
        return None
    return text[: last.start()].strip(), last.group("ans").strip()
