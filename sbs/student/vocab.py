"""A causal student's task output vocabulary (`model.output_vocab=task`).

Gemma 3's LM head has 262,144 rows. A task produces a small share of them: SVAMP's equations,
CQA's choice words and the rationales' words. With `output_vocab=task` the student is a model over
that set K. Training takes the loss under the softmax over K (the LM head computes those rows
only), generation suppresses every other token, and choice scoring normalises over K. So all
three use one distribution. Nothing is approximated: a token outside K has probability 0.

K holds every token of the training rows as the Collator encodes them (inputs, task markers,
targets, EOS) and every candidate answer as a label-task target. The candidates are the label
space, or each example's choices in every split: CQA's choices are part of its inputs. K is
found once, on the driver, and saved in `sbs_meta.json` (`output_vocab`). The export also writes
it as `generation_config.suppress_tokens`, so plain transformers' `generate()` is restricted in
the same way.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from sbs.config import ConfigError
from sbs.student.config import StudentTrainConfig

CHUNK = 512  # rows per Collator call while collecting token ids


def unwrap(model: Any) -> Any:
    """The model inside DeepSpeed / DDP wrappers (a DeepSpeed engine has a `.config` of its own)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def vocab_size(model: Any) -> int:
    """The width of the model's logits (its text config's vocab_size)."""
    cfg = unwrap(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.vocab_size)


def suppressed(vocab: Sequence[int], size: int) -> list[int]:
    """Every token id below `size` outside `vocab`: what generation must never produce."""
    keep = set(vocab)
    return [i for i in range(size) if i not in keep]


def task_vocab(cfg: StudentTrainConfig, rows: list[dict[str, Any]]) -> list[int]:
    """The sorted token ids of K for these training rows and the dataset's candidate answers."""
    from sbs.student.collate import Collator
    from sbs.student.data import load_dataset, load_split
    from sbs.student.loop import make_meta
    from sbs.student.models import load_tokenizer

    kind = student_kind(cfg)
    if kind != "causal":
        raise ConfigError(f"model.output_vocab=task: only for causal students ({cfg.model.name} is {kind})")
    tok = load_tokenizer(cfg.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    meta = make_meta(cfg, "causal")
    collate = Collator(tok, meta)
    ids: set[int] = {collate.eos}
    for i in range(0, len(rows), CHUNK):
        for b in collate(rows[i:i + CHUNK]).values():
            ids.update(b["input_ids"].unique().tolist())
    ds, d = load_dataset(cfg), cfg.data
    cands: set[str] = set(ds.label_space or ())
    if ds.lists_choices:
        for split in ds.splits():
            for e in load_split(ds, split, "data.dataset", d.source, d.hub_data_files):
                cands.update(ds.candidates(e.fields) or ())
    for t in tok([x for c in sorted(cands) for x in candidate_targets(meta, c)],
                 add_special_tokens=False)["input_ids"] if cands else []:
        ids.update(t)
    return sorted(ids)


def student_kind(cfg: StudentTrainConfig) -> str:
    """'causal', 'seq2seq' or 'encoder_decoder', found on the driver (a hub model's `kind: auto`
    from its config alone), so a wrong setting fails before any Ray start-up."""
    from sbs.student.models import BUILDERS, hub_kind

    if cfg.model.name in BUILDERS:
        return BUILDERS[cfg.model.name][1]
    return hub_kind(cfg.model.name) if cfg.model.kind == "auto" else cfg.model.kind


def candidate_targets(meta: Any, candidate: str) -> list[str]:
    """The texts a candidate answer is a target in: the label task's, and for single_task students
    the end of their one target ("... So the answer is <candidate>.")."""
    out = [meta.causal_target(candidate)]
    if meta.method == "single_task":
        out.append(meta.causal_target(meta.single_task_target("", candidate)))
    return out


def outside(tok: Any, meta: Any, candidate: str) -> list[int]:
    """The token ids of `candidate`'s targets (`candidate_targets`, and EOS) that the student's
    output vocabulary lacks: non-empty means the student gives it probability 0."""
    if meta.output_vocab is None:
        return []
    keep = set(meta.output_vocab)
    ids = [i for t in tok(candidate_targets(meta, candidate), add_special_tokens=False)["input_ids"] for i in t]
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    return sorted({i for i in [*ids, eos] if i not in keep})


_LOCK = threading.Lock()
_ACTIVE = threading.local()  # per thread: {id(head): vocab} of the restricted blocks it is inside
_INSTALLED: dict[int, tuple[Any, int]] = {}  # id(head) -> (the forward it had on the instance or None, users)


@contextlib.contextmanager
def restricted_head(model: Any, vocab: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the model's LM head computes the logits of `vocab`'s rows only (in its
    order), through the model's own forward (so soft-capping and the like still apply).

    Only the calling thread sees the cut: the head dispatches per thread, so a model shared with
    another thread (a Serve replica generating while it scores) keeps its whole head there, and
    blocks nest (the inner vocabulary applies until it exits)."""
    if vocab is None:
        yield
        return
    head = unwrap(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ValueError(f"model.output_vocab=task: the LM head is a {type(head).__name__}, not a plain Linear "
                         "(an adapted LM head, e.g. LoRA on lm_head, cannot be restricted)")
    key = id(head)
    with _LOCK:
        if key in _INSTALLED:
            prev, users = _INSTALLED[key]
            _INSTALLED[key] = (prev, users + 1)
        else:
            prev = head.__dict__.get("forward")  # a forward already set on the instance is kept
            plain = prev if prev is not None else type(head).forward.__get__(head)

            def forward(h: torch.Tensor) -> torch.Tensor:
                cut = getattr(_ACTIVE, "heads", {}).get(key)
                if cut is None:
                    return plain(h)
                bias = None if head.bias is None else head.bias.index_select(0, cut)
                return F.linear(h, head.weight.index_select(0, cut), bias)

            head.forward = forward
            _INSTALLED[key] = (prev, 1)
    heads = _ACTIVE.__dict__.setdefault("heads", {})
    outer = heads.get(key)
    heads[key] = vocab
    try:
        yield
    finally:
        if outer is None:
            heads.pop(key, None)
        else:
            heads[key] = outer
        with _LOCK:
            prev, users = _INSTALLED[key]
            if users > 1:
                _INSTALLED[key] = (prev, users - 1)
            else:
                del _INSTALLED[key]
                if prev is None:
                    del head.forward
                else:
                    head.forward = prev


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """log p(target) under the softmax over `logits`' columns (the whole vocabulary, or `vocab`'s
    ids in order); a target outside `vocab` gets -inf."""
    if vocab is None:
        return -F.cross_entropy(logits, targets, reduction="none")
    pos = torch.searchsorted(vocab, targets).clamp(max=vocab.numel() - 1)
    logp = -F.cross_entropy(logits, pos, reduction="none")
    return torch.where(vocab[pos] == targets, logp, torch.full_like(logp, float("-inf")))


def write_generation_vocab(export_dir: Any, vocab: Sequence[int]) -> None:
    """Record the output vocabulary as the export's `generation_config.suppress_tokens`."""
    from pathlib import Path

    from transformers import AutoConfig, GenerationConfig

    d = Path(export_dir)
    config = AutoConfig.from_pretrained(d)
    gen = (GenerationConfig.from_pretrained(d) if (d / "generation_config.json").is_file()
           else GenerationConfig.from_model_config(config))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    gen.suppress_tokens = suppressed(vocab, int(text.vocab_size))
    gen.save_pretrained(d)
