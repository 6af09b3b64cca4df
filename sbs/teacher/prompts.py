"""Teacher prompts as data: load `sbs/datasets/prompts/<dataset>.yaml` (a generic dataset: the
`prompt_file` its YAML names) and render them.

A prompt file holds the query template (`{input}` is the student input text), the answer-format
instruction, the zero-shot cue and 6-10 exemplars (id, input, target) from a non-test split.
Two renderings of the same prompt: one plain-completion string (base models, /completions) and
a chat message list (instruction-tuned models, /chat/completions); the backend picks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from sbs.datasets import GenericDataset, TaskDataset

SEP = "\n\n"  # between few-shot blocks; also a default stop string


@dataclass(frozen=True)
class Exemplar:
    id: str
    input: str
    target: str


@dataclass(frozen=True)
class PromptSpec:
    dataset: str
    split: str
    query: str
    answer_format: str
    zeroshot_cue: str
    exemplars: tuple[Exemplar, ...]


def prompts_dir() -> Path:
    return Path(str(resources.files("sbs") / "datasets" / "prompts"))


def _generic_spec(ds: GenericDataset) -> PromptSpec:
    """Zero-shot prompt for a generic YAML dataset: its answer marker is what its parser reads."""
    marker = ds.cfg.answer_marker
    space = f" one of: {', '.join(ds.label_space)}" if ds.label_space else ""
    return PromptSpec(ds.name, "", "Q: {input}\nA:", f'Finish with "{marker} <answer>." where <answer> is{space or " the answer"}.',
                      "Let's think step by step.", ())


def load_prompt(ds: TaskDataset, path: str | Path | None = None) -> PromptSpec:
    """The dataset's prompt file (or `path`); errors name the file and the field. A generic dataset
    without a `prompt_file` gets a zero-shot prompt."""
    path = path or (ds.prompt_path if isinstance(ds, GenericDataset) else prompts_dir() / f"{ds.name}.yaml")
    if path is None:
        return _generic_spec(ds)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: prompt file not found")
    data: dict[str, Any] = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for key in ("query", "answer_format", "exemplars"):
        if key not in data:
            raise ValueError(f"{p}: missing field {key!r}")
    if "{input}" not in data["query"]:
        raise ValueError(f"{p}: field 'query' must contain {{input}}")
    exs = []
    for i, e in enumerate(data["exemplars"]):
        missing = [k for k in ("id", "input", "target") if not isinstance(e.get(k), str) or not e[k].strip()]
        if missing:
            raise ValueError(f"{p}: exemplars[{i}]: missing or empty {missing}")
        exs.append(Exemplar(e["id"], e["input"], e["target"]))
    return PromptSpec(data.get("dataset", ds.name), data.get("split", ""), data["query"], data["answer_format"],
                      data.get("zeroshot_cue", "Let's think step by step."), tuple(exs))


class Renderer:
    """Renders one example's prompt in both forms; the few-shot prefix is built once."""

    def __init__(self, spec: PromptSpec, mode: Literal["fewshot", "zeroshot"], hold_out: bool = True):
        if mode == "fewshot" and not spec.exemplars:
            raise ValueError(f"prompt.mode=fewshot: no exemplars for dataset {spec.dataset!r}; name a prompt file "
                             f"in its YAML (prompt_file: ...) or use prompt.mode=zeroshot")
        self.spec, self.mode = spec, mode
        # Ids whose answers are in the prompt: the pipeline rejects them as `exemplar`, never outputs them.
        self.exemplar_ids = frozenset(e.id for e in spec.exemplars) if mode == "fewshot" and hold_out else frozenset()
        if mode == "fewshot":
            self._prefix = "".join(f"{self._query(e.input)} {e.target}{SEP}" for e in spec.exemplars)
        else:
            self._prefix = spec.answer_format + SEP

    def _query(self, text: str) -> str:
        return self.spec.query.replace("{input}", text)

    def completion(self, text: str) -> str:
        """Plain-completion prompt; the continuation is `<rationale> <answer sentence>`."""
        q = self._query(text)
        return self._prefix + (q if self.mode == "fewshot" else f"{q} {self.spec.zeroshot_cue}")

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat rendering: instruction as system, exemplars as user/assistant turns."""
        msgs = [{"role": "system", "content": self.spec.answer_format}]
        if self.mode == "fewshot":
            for e in self.spec.exemplars:
                msgs += [{"role": "user", "content": e.input}, {"role": "assistant", "content": e.target}]
            msgs.append({"role": "user", "content": text})
        else:
            msgs.append({"role": "user", "content": f"{text}\n\n{self.spec.zeroshot_cue}"})
        return msgs

    def messages_json(self, text: str) -> str:
        return json.dumps(self.messages(text), ensure_ascii=False)


def default_stop(ds: TaskDataset) -> list[str]:
    """Stop where the model starts inventing the next exemplar (or leaves a blank line)."""
    return [SEP] + ["\n" + m for m in ds.exemplar_markers]
