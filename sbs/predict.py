"""Label-only inference with an exported student (shared by `sbs eval` and Ray Serve).

The paper's point at test time: only the label task runs, with a short max length, so the
student answers without writing a rationale. `explain=True` additionally runs the explain task.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sbs.export import ExportMeta


def load_model(export_dir: str | Path, kind: str, dtype: torch.dtype | None = None) -> Any:
    import transformers as tr

    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if kind == "seq2seq":
        return tr.AutoModelForSeq2SeqLM.from_pretrained(export_dir, **kw)
    if kind == "encoder_decoder":
        return tr.EncoderDecoderModel.from_pretrained(export_dir, **kw)
    if kind == "causal":
        return tr.AutoModelForCausalLM.from_pretrained(export_dir, **kw)
    raise ValueError(f"model_kind: unknown {kind!r}")


_DECIMAL = re.compile(r"(?<=\d) ?\. ?(?=\d)")


@dataclass
class Prediction:
    label: str
    raw: str
    rationale: str | None = None


class Student:
    def __init__(self, model: Any, tokenizer: Any, meta: ExportMeta, device: str = "cpu",
                 generate_kwargs: dict[str, Any] | None = None):
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.meta = meta
        self.device = device
        # e.g. synced_gpus=True when validating under ZeRO-3: every rank must run the same decode steps
        self.generate_kwargs = dict(generate_kwargs or {})
        # WordPiece (BERT, MiniLM) drops whitespace: "84.0" decodes as "84. 0", which no scorer
        # reads as a number. Such tokenizers get their decimals re-joined after decoding.
        probe = self.tok.decode(self.tok("84.5", add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        self._rejoin_decimals = probe.strip() != "84.5"
        if meta.model_kind == "causal":
            self.tok.padding_side = "left"  # generation continues the prompt's right end
            if self.tok.pad_token is None:
                self.tok.pad_token = self.tok.eos_token

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> "Student":
        from transformers import AutoTokenizer

        meta = ExportMeta.read(export_dir)
        model = load_model(export_dir, meta.model_kind, dtype)
        tok = AutoTokenizer.from_pretrained(export_dir)
        return cls(model, tok, meta, device)

    def max_input_tokens(self) -> int:
        return self.meta.max_input_length

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tok(texts, add_special_tokens=True)["input_ids"]]

    @torch.inference_mode()
    def _generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if self.meta.model_kind == "causal":
            prompts = [p + self.meta.causal_separator for p in prompts]
        enc = self.tok(prompts, return_tensors="pt", padding=True, truncation=True,
                       max_length=self.meta.max_input_length).to(self.device)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  **self.generate_kwargs)
        if self.meta.model_kind == "causal":
            out = out[:, enc["input_ids"].shape[1]:]
        return self.decode(out)

    def decode(self, ids: Any) -> list[str]:
        texts = [t.strip() for t in self.tok.batch_decode(ids, skip_special_tokens=True)]
        return [_DECIMAL.sub(".", t) for t in texts] if self._rejoin_decimals else texts

    def predict(self, inputs: list[str], explain: bool = False, batch_size: int = 32) -> list[Prediction]:
        """Labels for student input texts; with `explain`, also a rationale (multitask / single_task)."""
        meta = self.meta
        label_len = meta.max_label_length
        if meta.method == "single_task":  # its label comes after the rationale in one target
            label_len = meta.max_rationale_length + meta.max_label_length
        preds: list[Prediction] = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            raws = self._generate([meta.label_input(x) for x in chunk], label_len)
            rats: list[str | None] = [None] * len(chunk)
            if explain and meta.method == "multitask":
                rats = self._generate([meta.explain_input(x) for x in chunk], meta.max_rationale_length)
            elif explain and meta.method == "single_task":
                rats = [meta.rationale_from_output(r) for r in raws]
            preds += [Prediction(meta.label_from_output(r), r, rt) for r, rt in zip(raws, rats)]
        return preds
