"""Causal students: one shared input prefix, several task branches, logits only where a loss is taken.

A causal row is laid out as

    [x tokens (with BOS)] [branch 1: marker + target + EOS] [branch 2: marker + target + EOS] ...

Every branch attends to the prefix and to itself, never to another branch, and its positions
continue from the prefix's end: each branch sees exactly what it would see alone after x (a block
attention mask + position ids). So the multi-task step (label and rationale branches) computes x
once instead of twice, and choice scoring runs one branch per candidate answer over one prefix.
The task marker sits *after* x ("\\nAnswer:" / "\\nExplanation:") so that the prefix is shared;
docs/student.md says why. With one branch the plain 2-D mask is used (no 4-D mask needed).

The LM head runs only at the positions whose next token is a target (`logits_to_keep` as a
boolean mask): for Gemma 3 (262k vocabulary) that is most of a training step's cost otherwise.
With a task output vocabulary (`sbs.student.vocab`) it also computes only that vocabulary's rows.
The decoder's linear layers and MLPs skip the padding positions and each branch's final EOS token
(`live_positions`: nothing reads it), and the last layer's query, output projection and MLP run at
the kept positions only (`sbs.student.unpad`), always,
and where training records gradients, Gemma's norms and MLP activation run as fused kernels
(`sbs.student.fused`, unless `model.fused_kernels=false`). All are exact: tests/test_causal.py
(tests/test_output_vocab.py for the vocabulary, tests/test_unpad.py for the skipped positions,
tests/test_fused.py for the kernels) compare against plain forward passes.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from sbs.student.fused import fused
from sbs.student.unpad import unpadded
from sbs.student.vocab import restricted_head, target_logprobs, unwrap

IGNORE = -100
PAD_SEGMENT = -1


def encode_rows(tok: Any, prefixes: Sequence[str], branches: Sequence[Sequence[tuple[str, str]]],
                max_prefix: int, max_targets: Sequence[int | None], eos: int, pad: int,
                vocab: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Token tensors for rows of (prefix text, [(marker, target), ...]); right-padded.

    Returns input_ids, labels (IGNORE but on target tokens, HF-aligned: labels[t] is token t),
    segments (0 prefix, k for branch k, -1 padding) and position_ids, plus `vocab` (the sorted
    output vocabulary, `sbs.student.vocab`) when the student has one. Tokenisation is the same
    at inference (`prompt_ids`): the prefix with special tokens, markers and targets without.
    """
    rows_ids, rows_lab, rows_seg, rows_pos = [], [], [], []
    for prefix, br in zip(prefixes, branches):
        p = prefix_ids(tok, prefix, max_prefix)
        ids, lab, seg, pos = list(p), [IGNORE] * len(p), [0] * len(p), list(range(len(p)))
        for k, ((marker, target), max_t) in enumerate(zip(br, max_targets), start=1):
            m = marker_ids(tok, marker)
            t = tok(target, add_special_tokens=False)["input_ids"][:cut(max_t)] + [eos]
            ids += m + t
            lab += [IGNORE] * len(m) + t
            seg += [k] * (len(m) + len(t))
            pos += list(range(len(p), len(p) + len(m) + len(t)))
        rows_ids.append(ids), rows_lab.append(lab), rows_seg.append(seg), rows_pos.append(pos)
    width = max(len(r) for r in rows_ids)

    def pad_to(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    out = {"input_ids": pad_to(rows_ids, pad), "labels": pad_to(rows_lab, IGNORE),
           "segments": pad_to(rows_seg, PAD_SEGMENT), "position_ids": pad_to(rows_pos, 0)}
    if vocab is not None:
        out["vocab"] = torch.tensor(vocab, dtype=torch.long)
    return out


def cut(max_target: int | None) -> int | None:
    """Target tokens kept before the EOS: max_target - 1, or all of them (None)."""
    return None if max_target is None else max_target - 1


def prefix_ids(tok: Any, text: str, max_len: int) -> list[int]:
    return tok(text, truncation=True, max_length=max_len)["input_ids"]


def marker_ids(tok: Any, marker: str) -> list[int]:
    ids = tok(marker, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"task marker {marker!r} tokenizes to nothing: a branch needs a marker token before "
                         "its target (the first target token is predicted from it)")
    return ids


def prompt_ids(tok: Any, text: str, marker: str, max_len: int) -> list[int]:
    """The generation prompt of one input: exactly how training tokenised prefix + marker."""
    m = marker_ids(tok, marker)
    return prefix_ids(tok, text, max(1, max_len - len(m))) + m


def block_mask(segments: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype,
               window: int | None = None) -> torch.Tensor:
    """(B, 1, T, T) additive mask: causal, no padding keys, a branch sees the prefix and itself only.

    `window`: a sliding-window layer's span, measured in positions (what a branch's separate pass
    would measure in sequence indices), so local layers see exactly what they would alone."""
    T = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k != PAD_SEGMENT) & ((k == 0) | (k == q))
    if window is not None:
        allowed &= (positions[:, :, None] - positions[:, None, :]) < window
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)  # padding queries: no empty rows
    out = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def branch_attention(model: Any, segments: torch.Tensor, positions: torch.Tensor) -> Any:
    """The block mask in the form the model takes: per layer type for models that mix
    sliding-window and global layers (Gemma 3), one windowed mask when every layer slides."""
    cfg, dtype = unwrap(model).config, _param_dtype(model)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    full = block_mask(segments, positions, dtype)
    if types and window and "sliding_attention" in types:
        return {t: (block_mask(segments, positions, dtype, window) if t == "sliding_attention" else full)
                for t in set(types)}
    if window and not types and getattr(cfg, "use_sliding_window", True):
        return block_mask(segments, positions, dtype, window)
    return full


def _param_dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def live_positions(segments: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose outputs something reads. A prefix position is a key for every
    branch; a branch position is read only by the kept positions at or after it in its own branch (a
    branch attends to the prefix and itself), so a branch's tail after its last kept position (its
    EOS token: it predicts nothing) is read by nothing and need not be computed at all."""
    B, T = segments.shape
    idx = torch.arange(T, device=segments.device).expand(B, T)
    seg = segments.clamp(min=0)  # padding's -1 goes to the prefix's slot: masked out below
    last_kept = torch.full((B, int(seg.max()) + 1), -1, dtype=torch.long, device=segments.device)
    last_kept = last_kept.scatter_reduce(1, seg, torch.where(keep, idx, -1), "amax")
    return (segments != PAD_SEGMENT) & ((segments == 0) | (idx <= last_kept.gather(1, seg)))


def token_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p of each target token, its segment, its row): the LM head runs on target positions only,
    and over the batch's output `vocab` only when it has one (-inf for a target outside it)."""
    segs, labels = batch["segments"], batch["labels"]
    multi = int(segs.max()) > 1
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    kw: dict[str, Any] = {"input_ids": batch["input_ids"], "logits_to_keep": keep}
    if multi:
        kw["attention_mask"] = branch_attention(model, segs, batch["position_ids"])
        kw["position_ids"] = batch["position_ids"]
    else:  # one branch: an ordinary right-padded row, the default 2-D mask and positions
        kw["attention_mask"] = (segs != PAD_SEGMENT).long()
    vocab = batch.get("vocab")
    with restricted_head(model, vocab), unpadded(model, live_positions(segs, keep), keep), fused():
        logits = model(**kw).logits.float()  # (N, V or len(vocab)): one row per kept position
    targets = labels[:, 1:][keep[:, :-1]]
    logp = target_logprobs(logits, targets, vocab)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    return logp, segs[:, 1:][keep[:, :-1]], rows[:, :-1][keep[:, :-1]]


def branch_losses(model: Any, batch: dict[str, torch.Tensor], n_branches: int) -> list[torch.Tensor]:
    """Mean token cross-entropy of each branch over the batch (what separate passes would give)."""
    logp, seg, _ = token_logprobs(model, batch)
    if "vocab" in batch and bool(torch.isinf(logp).any()):
        raise ValueError("a training target token is outside the student's output vocabulary "
                         "(model.output_vocab=task): the vocabulary was found from other rows")
    return [-logp[seg == k].mean() for k in range(1, n_branches + 1)]


def branch_scores(model: Any, batch: dict[str, torch.Tensor], n_branches: int, normalize: bool
                  ) -> torch.Tensor:
    """(B, n_branches) summed (or per-token mean) log-likelihood of each branch's target."""
    logp, seg, row = token_logprobs(model, batch)
    B = batch["labels"].shape[0]
    idx = row * n_branches + (seg - 1)
    total = torch.zeros(B * n_branches, dtype=logp.dtype, device=logp.device).index_add_(0, idx, logp)
    if not normalize:
        return total.view(B, n_branches)
    count = torch.zeros_like(total).index_add_(0, idx, torch.ones_like(logp))
    return (total / count.clamp(min=1)).view(B, n_branches)
