"""HTTP request/response shapes of the serving API, and client-error messages that name the field.

A request carries one example (`input`) or a list (`inputs`). An example is either an object in
the dataset's own fields (`{"premise": ..., "hypothesis": ...}`) or a string: the raw student
input text. Field checks on examples are the dataset layer's (`format_input`), so the HTTP API
and the datasets agree on what a valid record is.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Errors are JSON {"error": <one line naming the problem>, "errors": [{"field", "message"}...]}.


class ClientError(Exception):
    """A request that cannot be answered as asked: a 4xx with `message` naming the field the client
    must fix, or a 503 when the service cannot answer now (no replica answered in time)."""

    def __init__(self, status: int, message: str, field: str = ""):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict[str, Any]:
        return error_body([(self.field, self.message)])


def error_body(problems: list[tuple[str, str]]) -> dict[str, Any]:
    errors = [{"field": f, "message": m} for f, m in problems]
    head = "; ".join(f"{f}: {m}" if f else m for f, m in problems)
    return {"error": head, "errors": errors}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(None, description="which student answers; optional when only one is served")
    input: Any = Field(None, description="one example: an object in the dataset's fields, or student input text")
    inputs: list[Any] | None = Field(None, description="several examples (each as in `input`)")
    explain: bool = Field(False, description="also generate a rationale (multitask / single_task students)")
    decoding: Literal["generate", "choices"] = Field(
        "generate", description="generate: the label task's greedy output; choices: rank the closed answer set "
        "(the NLI labels, a CQA example's choices) by the label task's log-likelihood and return every score")

    @model_validator(mode="after")
    def _one_of(self) -> "PredictRequest":
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'input' (one example) or 'inputs' (a list of examples)")
        if self.inputs is not None and not self.inputs:
            raise ValueError("'inputs' is an empty list")
        return self

    def examples(self) -> list[tuple[str, Any]]:
        """(field path, example) pairs, so errors can say which example is wrong."""
        if self.inputs is None:
            return [("input", self.input)]
        return [(f"inputs[{i}]", x) for i, x in enumerate(self.inputs)]


class Prediction(BaseModel):
    label: str
    rationale: str | None = None
    scores: dict[str, float] | None = Field(None, description="decoding=choices: log-likelihood of each candidate")


class PredictResponse(BaseModel):
    dataset: str
    model: str
    version: str
    method: str
    predictions: list[Prediction]
    explain_unavailable: str | None = Field(
        None, description="set when explain was asked of a student that has no rationale task")


class StudentInfo(BaseModel):
    name: str
    version: str
    dataset: str
    method: str
    model_kind: str
    base_model: str
    label_space: list[str] | None
    input_fields: list[str]
    can_explain: bool
    max_input_tokens: int
    max_label_tokens: int
    sbs_version: str


def pydantic_problems(errors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """FastAPI/pydantic validation errors as (field, message); the `body` prefix is dropped."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = ".".join(loc)
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field; allowed: {sorted(PredictRequest.model_fields)}"
        elif e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            msg = f"request body is not valid JSON ({ctx.get('error', msg)})"
            field = ""
        elif e.get("type") == "missing" and not field:
            msg = "request body is missing; send a JSON object"
        out.append((field, msg.removeprefix("Value error, ")))
    return out
