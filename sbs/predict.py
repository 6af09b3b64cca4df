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
from sbs.student.causal import IGNORE, branch_scores, cut, encode_rows, prompt_ids
from sbs.student.vocab import suppressed, vocab_size


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
class Answer:
    """One student answer (the HTTP form is sbs.serve.schemas.Prediction)."""

    label: str
    raw: str
    rationale: str | None = None
    scores: dict[str, float] | None = None  # choice decoding: log-likelihood of each candidate label


def ignore_shared_prefix(labels: torch.Tensor, segments: torch.Tensor, n_branches: int) -> None:
    """In place: per row, the target tokens every branch starts with are not scored."""
    for b in range(labels.shape[0]):
        pos = [(segments[b] == k).nonzero()[:, 0] for k in range(1, n_branches + 1)]
        pos = [p[labels[b, p] != IGNORE] for p in pos]
        toks = [labels[b, p].tolist() for p in pos if p.numel()]
        if len(toks) < 2:
            continue
        shared = 0
        while all(shared < len(t) for t in toks) and len({t[shared] for t in toks}) == 1:
            shared += 1
        for p in pos:
            labels[b, p[:shared]] = IGNORE


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
        if meta.model_kind == "causal" and self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        if meta.output_vocab is not None:  # a task vocabulary: generation never leaves it (sbs.student.vocab)
            self.generate_kwargs.setdefault("suppress_tokens", suppressed(meta.output_vocab, vocab_size(model)))

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> "Student":
        from transformers import AutoTokenizer

        meta = ExportMeta.read(export_dir)
        model = load_model(export_dir, meta.model_kind, dtype)
        tok = AutoTokenizer.from_pretrained(export_dir)
        return cls(model, tok, meta, device)

    def _causal_prompts(self, texts: list[str], marker: str) -> dict[str, torch.Tensor]:
        """Left-padded prompts (generation continues the right end), tokenised as in training."""
        rows = [prompt_ids(self.tok, t, marker, self.meta.max_input_length) for t in texts]
        width = max(map(len, rows))
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.inference_mode()
    def _generate(self, prompts: list[str], max_new_tokens: int, marker: str | None = None) -> list[str]:
        """Greedy continuations; causal students get `marker` (the task's) after each prompt."""
        if self.meta.model_kind == "causal":
            enc = self._causal_prompts(prompts, marker or self.meta.causal_separator)
        else:
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

    @torch.inference_mode()
    def score_choices(self, inputs: list[str], candidates: list[list[str]], rationales: list[str] | None = None,
                      normalize: bool = False) -> list[list[float]]:
        """Log-likelihood of each candidate label as the label task's output (summed over its
        tokens and EOS; `normalize`: per token). Single-task students score "<rationale> So the
        answer is <candidate>." after their own generated rationale; causal ones score only the
        tokens after the part every candidate shares (the rationale, whose likelihood is the same
        for all of them and which, re-encoded, may hold tokens outside a task vocabulary)."""
        m = self.meta
        if m.method == "single_task":
            if rationales is None:
                raise ValueError("single_task choice scoring needs the generated rationales")
            targets = [[m.single_task_target(r, c) for c in cs] for r, cs in zip(rationales, candidates)]
            # No cut (None): the rationale was generated within the training length, and a cut at that
            # length can drop the candidate itself (then every candidate scores the same).
            max_t = None
        else:
            targets, max_t = candidates, m.max_label_length
        if m.model_kind == "causal":
            n = max(map(len, targets))
            batch = encode_rows(self.tok, [m.label_input(x) for x in inputs],
                                [[(m.causal_separator, m.causal_target(t)) for t in ts] for ts in targets],
                                m.max_input_length, [max_t] * n, self.eos, self.tok.pad_token_id, m.output_vocab)
            if m.method == "single_task":
                ignore_shared_prefix(batch["labels"], batch["segments"], n)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            scores = branch_scores(self.model, batch, n, normalize).tolist()
            return [row[: len(ts)] for row, ts in zip(scores, targets)]
        return self._seq2seq_scores([m.label_input(x) for x in inputs], targets, max_t, normalize)

    def _seq2seq_scores(self, inputs: list[str], targets: list[list[str]], max_t: int | None, normalize: bool
                        ) -> list[list[float]]:
        flat_in = [x for x, ts in zip(inputs, targets) for _ in ts]
        flat_t = [t for ts in targets for t in ts]
        enc = self.tok(flat_in, return_tensors="pt", padding=True, truncation=True,
                       max_length=self.meta.max_input_length).to(self.device)
        tgt = [ids[:cut(max_t)] + [self.eos] for ids in self.tok(flat_t, add_special_tokens=False)["input_ids"]]
        width = max(map(len, tgt))
        labels = torch.tensor([t + [IGNORE] * (width - len(t)) for t in tgt], device=self.device)
        logits = self.model(**enc, labels=labels).logits.float()
        keep = labels != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep
        flat = (logp.sum(-1) / (keep.sum(-1) if normalize else 1)).tolist()
        out, i = [], 0
        for ts in targets:
            out.append(flat[i:i + len(ts)])
            i += len(ts)
        return out

    def predict(self, inputs: list[str], explain: bool = False, batch_size: int = 32,
                candidates: list[list[str]] | None = None, normalize: bool = False) -> list[Answer]:
        """Labels for student input texts; with `explain`, also a rationale (multitask / single_task).

        `candidates` (one list per input) switches to choice decoding: the label is the candidate
        the label task finds most likely, and `scores` holds every candidate's log-likelihood."""
        meta = self.meta
        label_len = meta.max_label_length
        if meta.method == "single_task":  # its label comes after the rationale in one target
            label_len = meta.max_rationale_length + meta.max_label_length
        if candidates is not None and len(candidates) != len(inputs):
            raise ValueError(f"candidates: {len(candidates)} lists for {len(inputs)} inputs")
        preds: list[Answer] = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size]
            rats: list[str | None] = [None] * len(chunk)
            needs_text = candidates is None or meta.method == "single_task"
            raws = self._generate([meta.label_input(x) for x in chunk], label_len) if needs_text else [""] * len(chunk)
            if explain and meta.method == "multitask":
                rats = self._generate([meta.explain_input(x) for x in chunk], meta.max_rationale_length,
                                      meta.causal_explain_separator)
            elif meta.method == "single_task":
                rats = [meta.rationale_from_output(r) for r in raws]
            if candidates is None:
                preds += [Answer(meta.label_from_output(r), r, rt if explain else None) for r, rt in zip(raws, rats)]
                continue
            cands = candidates[i:i + batch_size]
            scores = self.score_choices(chunk, cands, [str(r) for r in rats], normalize)
            for j, (r, rt, cs, sc) in enumerate(zip(raws, rats, cands, scores)):
                if all(v == float("-inf") for v in sc):
                    raise ValueError(f"inputs[{i + j}]: every candidate needs a token outside this student's output "
                                     f"vocabulary (model.output_vocab=task), so none can be its answer: {cs}")
                best = max(range(len(cs)), key=lambda j: sc[j])
                preds.append(Answer(cs[best], r or cs[best], rt if explain else None, dict(zip(cs, sc))))
        return preds
