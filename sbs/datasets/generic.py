"""Users' own data with no code: JSONL or Parquet files plus a small YAML config.

    # my_task.yaml
    name: tickets
    files: {train: data/train.jsonl, test: data/test.jsonl}
    input_columns: [subject, body]
    label_column: category
    answer_type: label            # label | number | text
    label_space: [billing, bug, other]

`sbs ... --dataset my_task.yaml` then works like a built-in dataset, and shows as its `name` in
reports and outputs. The teacher is asked to end with `So the answer is <label>.` (the
`answer_marker`), which is what the parser reads. For `prompt.mode=fewshot`, `prompt_file` names a
prompt file in the format of `sbs/datasets/prompts/*.yaml` (query template, answer format,
exemplars whose ids are this dataset's ids); without one the teacher runs zero-shot only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import Field, model_validator

from sbs.arith import same_value, try_evaluate
from sbs.config import Config, ConfigError, load_config
from sbs.datasets.base import (BAD_EQUATION, NO_ANSWER, OUT_OF_SPACE, Example, Parsed, ParseResult, Rejected,
                               SplitUnavailable, TaskDataset, normalize_text, split_answer)


class GenericDatasetConfig(Config):
    name: str = Field(description="Dataset name used in outputs and metadata", pattern=r"^[A-Za-z0-9_.-]+$")
    files: dict[str, str] = Field(description="split name -> JSONL or Parquet file (relative to the YAML)")
    input_columns: list[str] = Field(min_length=1, description="columns that make up the student input")
    label_column: str = Field(description="column with the gold label")
    id_column: str | None = Field(None, description="column with a stable id (default: <name>-<split>-<row>)")
    answer_type: Literal["label", "number", "text"] = "label"
    label_space: list[str] | None = Field(None, description="allowed labels (required for answer_type=label)")
    answer_marker: str = Field("So the answer is", min_length=1)
    teacher_column: str | None = Field(None, description="optional column with recorded teacher outputs")
    prompt_file: str | None = Field(None, description="few-shot teacher prompt (the format of "
                                    "sbs/datasets/prompts/*.yaml), relative to the YAML; none: zero-shot only")

    @model_validator(mode="after")
    def _check(self) -> "GenericDatasetConfig":
        if self.answer_type == "label" and not self.label_space:
            raise ValueError("label_space is required when answer_type is 'label'")
        if not self.files:
            raise ValueError("files must name at least one split")
        return self


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object per line")
            rows.append(obj)
    return rows


class GenericDataset(TaskDataset):
    def __init__(self, cfg: GenericDatasetConfig, root: Path | None = None):
        self.cfg = cfg
        self.root = root or Path.cwd()
        self.name = cfg.name
        self.title = cfg.name
        self.input_fields = tuple(cfg.input_columns)
        self.shipped_splits = tuple(cfg.files)
        self.label_space = tuple(normalize_text(x) for x in cfg.label_space) if cfg.answer_type == "label" else None
        self._answer = re.compile(re.escape(cfg.answer_marker) + r"[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S | re.I)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "GenericDataset":
        cfg = load_config(GenericDatasetConfig, path)
        ds = cls(cfg, Path(path).resolve().parent)
        if ds.prompt_path and not ds.prompt_path.is_file():
            raise ConfigError(f"{path}: prompt_file: {ds.prompt_path} not found")
        return ds

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    @property
    def prompt_path(self) -> Path | None:
        """The dataset's own few-shot prompt file (`prompt_file`), or None."""
        return self._path(self.cfg.prompt_file) if self.cfg.prompt_file else None

    def student_input(self, fields: dict[str, Any]) -> str:
        cols = self.cfg.input_columns
        if len(cols) == 1:
            return str(fields[cols[0]]).strip()
        return "\n".join(f"{c.replace('_', ' ').capitalize()}: {str(fields[c]).strip()}" for c in cols)

    def _field_ok(self, name: str, value: Any) -> bool:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)

    def load(self, split: str, source: str = "shipped", limit: int | None = None, **_: Any) -> list[Example]:
        if split not in self.cfg.files:
            raise SplitUnavailable(f"{self.name}: split {split!r} not in files; configured: {list(self.cfg.files)}")
        path = self._path(self.cfg.files[split])
        out = []
        for i, row in enumerate(_read_rows(path)):
            if limit is not None and len(out) >= limit:
                break
            where = f"{path}: row {i + 1}"
            for c in (*self.cfg.input_columns, self.cfg.label_column):
                if c not in row or row[c] is None:
                    raise ValueError(f"{where}: missing column {c!r}")
            f = {c: row[c] for c in self.cfg.input_columns}
            rid = str(row[self.cfg.id_column]) if self.cfg.id_column else f"{self.name}-{split}-{i:06d}"
            teacher = row.get(self.cfg.teacher_column) if self.cfg.teacher_column else None
            out.append(Example(rid, self.student_input(f), str(row[self.cfg.label_column]), f, teacher))
        ids = [e.id for e in out]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: id column {self.cfg.id_column!r} has duplicate values")
        return out

    def _parse_cut(self, text: str, example: Example | None) -> ParseResult:
        sp = split_answer(text, self._answer)
        if sp is None:
            return Rejected(NO_ANSWER, f"no {self.cfg.answer_marker!r} in the output")
        rationale, ans = sp
        if self.cfg.answer_type == "number" and try_evaluate(ans) is None:
            return Rejected(BAD_EQUATION, f"answer {ans[:80]!r} is not a number or arithmetic expression")
        if self.cfg.answer_type == "label":
            canon = self.normalize_label(ans)
            if canon is None:
                return Rejected(OUT_OF_SPACE, f"answer {ans[:80]!r} is not one of {list(self.label_space)}")
            ans = canon
        return Parsed(rationale, ans)

    def normalize_label(self, pred: str, example: Example | None = None) -> str | None:
        if self.cfg.answer_type == "number":
            v = try_evaluate(pred)
            return None if v is None else repr(v)
        p = normalize_text(pred)
        if self.cfg.answer_type == "label":
            return p if p in self.label_space else None
        return p or None

    def score(self, pred: Any, example: Example) -> bool:
        if self.cfg.answer_type == "number":
            return same_value(pred, example.label)
        return super().score(pred, example)
