"""A causal student's position-wise layers run on real tokens only: padding costs no matmul.

A batch of causal rows is right-padded to its longest row (CQA, batch 16: 1,136 positions for 916
tokens). Most of a step is the decoder's linear layers (docs/student.md: 72% in `aten::mm`), and
they, like the MLP's activation, act on each position alone. Inside `unpadded(model, real)` each
such module gathers the real positions of its (B, T, ...) input, runs on those N rows alone, and
scatters its output back, zeros at padding. Attention, norms and embeddings still run padded.

Exact for every real position (up to float rounding: the products run over fewer rows). A padding
position then holds other values than in a padded pass, but nothing real reads it. Rows are
right-padded, so a causal query never reaches a later padding key, and the mask (the 2-D padding
mask or `causal.block_mask`) excludes padding keys anyway; no loss or score is taken there.
tests/test_unpad.py compares losses and gradients with padded passes.

The modules hooked are the top-most position-wise ones of the model body: every `mlp`, and every
linear layer outside one (attention projections, with their LoRA adapters where peft wrapped
them), never the LM head (`logits_to_keep` already limits it). A module that returns a tuple (a
mixture-of-experts MLP: hidden states, router logits) gets its first element scattered back and
the rest returned as computed on the real tokens. The hooks are installed once per
model and act only in the thread that entered `unpadded` (a Serve replica may generate in another
thread with the same model), as `sbs.student.vocab.restricted_head` does. They act during the
forward pass only: a model that recomputes layers in backward (gradient checkpointing, which sbs
does not turn on) would recompute them padded.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from sbs.student.vocab import unwrap

_ACTIVE = threading.local()
_LOCK = threading.Lock()


def _is_linear(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        return True
    try:  # GPT-2's projections
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a core dependency
        Conv1D = ()
    if isinstance(m, Conv1D):
        return True
    try:  # a peft adapter wrapping a linear layer (base + LoRA branch: both position-wise)
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return isinstance(m, BaseTunerLayer)


def positionwise_modules(model: Any) -> list[torch.nn.Module]:
    """The top-most position-wise modules of the body (see the module docstring), in model order."""
    body = unwrap(model)
    head = body.get_output_embeddings()
    found, taken = [], []
    for name, m in body.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if m is head:
            taken.append(name)
        elif name.rsplit(".", 1)[-1] == "mlp" or _is_linear(m):
            found.append(m)
            taken.append(name)
    return found


def _gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    state = getattr(_ACTIVE, "state", None)
    x = args[0] if args else None
    use = (state is not None and isinstance(x, torch.Tensor) and x.dim() >= 2
           and tuple(x.shape[:2]) == state["shape"])
    if state is not None:
        state["stack"].append(use)
    if not use:
        return None
    rows = x.reshape(-1, *x.shape[2:]).index_select(0, state["index"])
    return (rows.unsqueeze(0), *args[1:])


def _scatter(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    state = getattr(_ACTIVE, "state", None)
    if state is None or not state["stack"] or not state["stack"].pop():
        return None
    B, T = state["shape"]
    rest = None
    if isinstance(out, tuple):  # e.g. a mixture-of-experts MLP: (hidden states, router logits of the real tokens)
        out, rest = out[0], out[1:]
    y = out[0]  # (N, ...): this module's output at the real positions
    full = y.new_zeros(B * T, *y.shape[1:]).index_copy(0, state["index"], y).view(B, T, *y.shape[1:])
    return full if rest is None else (full, *rest)


def _install(body: torch.nn.Module) -> None:
    with _LOCK:
        if getattr(body, "_sbs_unpad_hooked", False):
            return
        for m in positionwise_modules(body):
            m.register_forward_pre_hook(_gather)
            m.register_forward_hook(_scatter)
        body._sbs_unpad_hooked = True


@contextmanager
def unpadded(model: Any, real: torch.Tensor) -> Iterator[None]:
    """Within the block, in this thread, the model's position-wise modules run on the positions where
    `real` (B, T, bool) is true and only there. A batch with no padding runs as it is, and so does
    every batch inside `padded()`."""
    if getattr(_ACTIVE, "off", False) or bool(real.all()):
        yield
        return
    _install(unwrap(model))
    prev = getattr(_ACTIVE, "state", None)
    _ACTIVE.state = {"shape": tuple(real.shape), "index": real.reshape(-1).nonzero().squeeze(1), "stack": []}
    try:
        yield
    finally:
        _ACTIVE.state = prev


@contextmanager
def padded() -> Iterator[None]:
    """Within the block, in this thread, `unpadded` runs everything padded: the reference that
    tests and benchmarks/student_step.py compare with."""
    prev = getattr(_ACTIVE, "off", False)
    _ACTIVE.off = True
    try:
        yield
    finally:
        _ACTIVE.off = prev
