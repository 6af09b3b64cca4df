"""Rows -> token tensors, per method and model kind, with the loss masked to the target.

Inputs and targets are written by `ExportMeta` (prefixes, single-task answer phrase, causal
separator), the same object inference uses, so training and `sbs.predict.Student` cannot drift.
Targets are tokenised without special tokens and end with EOS: an encoder-decoder built from
BERT would otherwise learn to emit [CLS] first. Padding and (causal) prompt tokens get -100.
Causal students get one row per example with the input as a shared prefix and one branch per
task (`sbs.student.causal`): multitask rows carry both the label and the rationale branch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from sbs.export import ExportMeta
from sbs.student.causal import IGNORE, encode_rows

Batch = dict[str, torch.Tensor]


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


class Collator:
    """Callable: a batch of rows (list of dicts or dict of columns) -> {"label": Batch, "rationale"?: Batch}.

    Causal students: {"label": Batch} with one branch, or {"joint": Batch} with the label and the
    rationale branch over one shared prefix (multitask)."""

    def __init__(self, tokenizer: Any, meta: ExportMeta):
        self.tok, self.meta = tokenizer, meta
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.eos is None:
            raise ValueError("tokenizer has neither an eos nor a sep token to end targets with")

    def _targets(self, texts: Sequence[str], max_len: int) -> list[list[int]]:
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [t[: max_len - 1] + [self.eos] for t in ids]

    def encode(self, inputs: Sequence[str], targets: Sequence[str], target_len: int) -> Batch:
        """Seq2seq rows: encoder inputs (task prefix included by the caller), decoder targets."""
        tgt = self._targets(targets, target_len)
        enc = self.tok(list(inputs), truncation=True, max_length=self.meta.max_input_length)["input_ids"]
        ids = _pad(enc, self.pad)
        return {"input_ids": ids, "attention_mask": _pad([[1] * len(e) for e in enc], 0),
                "labels": _pad(tgt, IGNORE)}

    def encode_causal(self, inputs: Sequence[str], branches: list[list[tuple[str, str]]],
                      target_lens: Sequence[int]) -> Batch:
        """Causal rows: each input a prefix followed by its (marker, target) branches."""
        m = self.meta
        return encode_rows(self.tok, list(inputs), [[(mk, m.causal_target(t)) for mk, t in br] for br in branches],
                           m.max_input_length, target_lens, self.eos, self.pad, m.output_vocab)

    def __call__(self, rows: Mapping[str, Sequence[Any]] | list[dict[str, Any]]) -> dict[str, Batch]:
        cols = _columns(rows)
        m = self.meta
        xs, labels = [str(x) for x in cols["input"]], [str(y) for y in cols["label"]]
        if m.model_kind == "causal":
            return self._causal(xs, labels, cols)
        if m.method == "multitask":
            rats = [str(r) for r in cols["rationale"]]
            return {"label": self.encode([m.label_input(x) for x in xs], labels, m.max_label_length),
                    "rationale": self.encode([m.explain_input(x) for x in xs], rats, m.max_rationale_length)}
        if m.method == "single_task":
            tgt = [m.single_task_target(r, y) for r, y in zip(cols["rationale"], labels)]
            return {"label": self.encode(xs, tgt, m.max_rationale_length + m.max_label_length)}
        return {"label": self.encode(xs, labels, m.max_label_length)}  # standard, distill


    def _causal(self, xs: list[str], labels: list[str], cols: Mapping[str, Sequence[Any]]) -> dict[str, Batch]:
        m = self.meta
        if m.method == "multitask":
            br = [[(m.causal_separator, y), (m.causal_explain_separator, str(r))]
                  for y, r in zip(labels, cols["rationale"])]
            return {"joint": self.encode_causal(xs, br, [m.max_label_length, m.max_rationale_length])}
        if m.method == "single_task":
            br = [[(m.causal_separator, m.single_task_target(r, y))] for r, y in zip(cols["rationale"], labels)]
            return {"label": self.encode_causal(xs, br, [m.max_rationale_length + m.max_label_length])}
        return {"label": self.encode_causal(xs, [[(m.causal_separator, y)] for y in labels], [m.max_label_length])}


def _columns(rows: Mapping[str, Sequence[Any]] | list[dict[str, Any]]) -> Mapping[str, Sequence[Any]]:
    if isinstance(rows, list):
        return {k: [r[k] for r in rows] for k in ("input", "label", "rationale") if rows and k in rows[0]}
    return rows
