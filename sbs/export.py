"""The exported student: what training writes and what eval and serving read.

An export directory holds `save_pretrained` weights (safetensors), the tokenizer, and
`sbs_meta.json` (this module's `ExportMeta`): method, prefixes, dataset, label space. Anything
that predicts with a student goes through `Student` here, so the label-only path is one code.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sbs import __version__
from sbs.config import Config, format_validation_error
from sbs.datasets.base import ChoiceLayout, split_answer

META_FILE = "sbs_meta.json"
Method = Literal["standard", "distill", "single_task", "multitask"]
ModelKind = Literal["seq2seq", "encoder_decoder", "causal"]
# single_task targets are "<rationale> So the answer is <label>": the label is what follows.
_SINGLE_TASK_ANSWER = re.compile(r"(?:[Ss]o t|T)he answer is[:\s]*(?P<ans>.+?)\s*\.?\s*$", re.S)


class Prefixes(Config):
    predict: str = Field("predict: ", description="task prefix of the label task (multitask only)")
    explain: str = Field("explain: ", description="task prefix of the rationale task (multitask only)")


class ExportMeta(Config):
    sbs_version: str = __version__
    method: Method
    dataset: str
    label_space: list[str] | None = None
    input_fields: list[str] = Field(default_factory=list)
    model_kind: ModelKind = "seq2seq"
    base_model: str = ""
    prefixes: Prefixes = Field(default_factory=Prefixes)
    single_task_answer: str = Field("So the answer is", description="joins rationale and label (single_task)")
    causal_separator: str = Field("\nAnswer:", min_length=1, description="causal LMs: the label task's marker, "
                                  "after the input (the input is a prefix both tasks share)")
    causal_explain_separator: str = Field("\nExplanation:", min_length=1, description="causal LMs: the "
                                          "rationale task's marker, after the input (multitask)")
    max_input_length: int = Field(512, gt=0)
    max_label_length: int = Field(32, gt=0)
    max_rationale_length: int = Field(128, gt=0)
    choice_layout: ChoiceLayout = Field("after", description="where the input lists the answer choices (CQA): "
                                        "after the question, before it, or none (data.choice_layout)")
    output_vocab: list[int] | None = Field(None, description="causal students with model.output_vocab=task: the "
                                           "sorted token ids the student's softmax runs over (sbs.student.vocab); "
                                           "null: the whole vocabulary")
    run_name: str = ""
    created: float = Field(default_factory=time.time)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_show_choices(cls, data: Any) -> Any:
        # Exports written before data.choice_layout existed say `show_choices: true|false`.
        if isinstance(data, dict) and "show_choices" in data and "choice_layout" not in data:
            data = dict(data)
            data["choice_layout"] = "after" if data.pop("show_choices") else "none"
        return data

    @field_validator("output_vocab")
    @classmethod
    def _sorted_ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or v[0] < 0 or any(a >= b for a, b in zip(v, v[1:]))):
            raise ValueError("must be a non-empty list of distinct token ids >= 0 in increasing order")
        return v

    @property
    def can_explain(self) -> bool:
        return self.method in ("multitask", "single_task")

    def write(self, out_dir: str | Path) -> Path:
        p = Path(out_dir) / META_FILE
        p.write_text(json.dumps(self.model_dump(mode="json"), indent=2), encoding="utf-8")
        return p

    @classmethod
    def read(cls, export_dir: str | Path) -> "ExportMeta":
        p = Path(export_dir) / META_FILE
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not an sbs export (no {META_FILE}); export a model with `sbs train`")
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON: {e}") from None
        except ValidationError as e:
            raise ValueError(format_validation_error(e, str(p))) from None

    # --- how inputs and targets are written, shared by training and inference ---------------
    def label_input(self, x: str) -> str:
        """Seq2seq: the encoder input of the label task. Causal: the prefix (its marker follows x)."""
        return self.prefixes.predict + x if self.method == "multitask" and self.model_kind != "causal" else x

    def explain_input(self, x: str) -> str:
        return self.prefixes.explain + x if self.method == "multitask" and self.model_kind != "causal" else x

    def causal_target(self, target: str) -> str:
        # The marker ends in ':' and the target starts with a space, so a word-piece vocabulary
        # sees " daydream" as it does in running text, not a fresh word start.
        return " " + target.strip()

    def single_task_target(self, rationale: str, label: str) -> str:
        return f"{rationale.strip()} {self.single_task_answer} {label.strip()}."

    def label_from_output(self, text: str) -> str:
        """The label in a decoded label-task output (single_task outputs carry a rationale first)."""
        text = text.strip()
        parts = split_answer(text, _SINGLE_TASK_ANSWER) if self.method == "single_task" else None
        return parts[1] if parts else text

    def rationale_from_output(self, text: str) -> str:
        parts = split_answer(text, _SINGLE_TASK_ANSWER) if self.method == "single_task" else None
        return parts[0] if parts else text.strip()
