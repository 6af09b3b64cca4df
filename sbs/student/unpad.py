"""A causal student's position-wise layers run on live tokens only: padding costs no matmul.

A batch of causal rows is right-padded to its longest row (CQA, batch 16: 1,136 positions for 916
tokens). Most of a step is the decoder's linear layers (docs/student.md: 72% in `aten::mm`), and
they, like the MLP's activation, act on each position alone. Inside `unpadded(model, live)` each
such module gathers the live positions of its (B, T, ...) input, runs on those N rows alone, and
scatters its output back, zeros elsewhere. Attention, norms and embeddings still run padded. The
live positions are the real tokens less those nothing reads (`causal.live_positions`: a branch's
EOS token, which predicts nothing and which no live position reads).

Exact for every live position (up to float rounding: the products run over fewer rows). Another
position then holds other values than in a padded pass, but no live one reads it: rows are
right-padded and a causal query never reaches a later key, the mask (the 2-D padding mask or
`causal.block_mask`) excludes padding keys and another branch's tokens, and no loss or score is
taken there. tests/test_unpad.py compares losses and gradients with padded passes.

The last decoder layer goes further when the caller says which positions are read (`read`: the
positions whose output reaches the LM head, a subset of the live ones). Nothing but the head reads
that layer's output, so at any other position only its keys and values matter (earlier positions
are keys for the read ones). Its query projection, attention output projection and MLP
(`last_layer_modules`: `q_proj`, `o_proj`, `mlp` by name; key and value projections never) then run
on the read positions alone; the attention runs with zero queries elsewhere, and whatever the
residual stream holds there is never read. For a standard CQA batch that is 42 of 916 positions:
the last layer costs about a tenth of what it did (docs/student.md, measured). Exact in the same
sense; an architecture whose projections are named otherwise (GPT-2's fused `c_attn`, `c_proj`)
restricts its `mlp` alone.

The modules hooked are the top-most position-wise ones of the model body: every `mlp`, and every
linear layer outside one (attention projections, with their LoRA adapters where peft wrapped
them), never the LM head (`logits_to_keep` already limits it). A module that returns a tuple (a
mixture-of-experts MLP: hidden states, router logits) gets its first element scattered back and
the rest returned as computed on the rows it ran on (the live tokens; the read ones in the last
layer: sbs takes no router loss). The hooks are installed once per
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


# the last layer's modules that act on a position's own output only (never its key or value)
LAST_LAYER_NAMES = ("q_proj", "o_proj", "mlp")


def last_layer_modules(model: Any) -> list[torch.nn.Module]:
    """The hooked modules of the last decoder layer that only the read positions need (see the
    module docstring). The last layer is the one holding the body's last `mlp`, and it must be the
    last entry of a layer list as long as the (text) config's `num_hidden_layers`; where it is not
    found so, none (the model runs as before)."""
    body = unwrap(model)
    cfg = getattr(body, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(cfg, "num_hidden_layers", None)
    hooked = positionwise_modules(body)
    names = {id(m): name for name, m in body.named_modules()}
    mlps = [names[id(m)] for m in hooked if names[id(m)].rsplit(".", 1)[-1] == "mlp"]
    if not n or not mlps or mlps[-1].count(".") < 2:
        return []
    layers_path, index, _ = mlps[-1].rsplit(".", 2)  # e.g. model.layers / 17 / mlp
    layers = body.get_submodule(layers_path)
    if not (isinstance(layers, torch.nn.ModuleList) and len(layers) == n and index == str(n - 1)):
        return []
    ids = {id(m) for m in hooked}
    return [m for name, m in layers[n - 1].named_modules()
            if id(m) in ids and name.rsplit(".", 1)[-1] in LAST_LAYER_NAMES]


def _rows(module: torch.nn.Module, state: dict[str, Any]) -> torch.Tensor | None:
    if getattr(module, "_sbs_unpad_last", False) and state["read"] is not None:
        return state["read"]
    return state["index"]


def _gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    state = getattr(_ACTIVE, "state", None)
    x = args[0] if args else None
    use = (state is not None and isinstance(x, torch.Tensor) and x.dim() >= 2
           and tuple(x.shape[:2]) == state["shape"])
    index = _rows(module, state) if use else None
    if state is not None:
        state["stack"].append(index)
    if index is None:
        return None
    rows = x.reshape(-1, *x.shape[2:]).index_select(0, index)
    return (rows.unsqueeze(0), *args[1:])


def _scatter(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    state = getattr(_ACTIVE, "state", None)
    if state is None or not state["stack"]:
        return None
    index = state["stack"].pop()
    if index is None:
        return None
    B, T = state["shape"]
    rest = None
    if isinstance(out, tuple):  # e.g. a mixture-of-experts MLP: (hidden states, router logits of the live tokens)
        out, rest = out[0], out[1:]
    y = out[0]  # (N, ...): this module's output at the positions it ran on
    full = y.new_zeros(B * T, *y.shape[1:]).index_copy(0, index, y).view(B, T, *y.shape[1:])
    return full if rest is None else (full, *rest)


def _install(body: torch.nn.Module) -> None:
    with _LOCK:
        if getattr(body, "_sbs_unpad_hooked", False):
            return
        for m in positionwise_modules(body):
            m.register_forward_pre_hook(_gather)
            m.register_forward_hook(_scatter)
        for m in last_layer_modules(body):
            m._sbs_unpad_last = True
        body._sbs_unpad_hooked = True


@contextmanager
def unpadded(model: Any, live: torch.Tensor, read: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, in this thread, the model's position-wise modules run on the positions where
    `live` (B, T, bool) is true and only there, and the last layer's `last_layer_modules` on those
    where `read` (B, T, bool, within `live`) is. A batch that is all live, with no `read`, runs as it
    is; inside `padded()` everything does, and inside `whole_last_layer()` `read` is ignored."""
    off = getattr(_ACTIVE, "off", set())
    if "padding" in off:
        yield
        return
    if "last_layer" in off:
        read = None
    if read is not None and bool((read & ~live).any()):
        raise ValueError("unpadded: a read position is not a live one")
    all_live = bool(live.all())
    if read is None and all_live:
        yield
        return
    _install(unwrap(model))
    prev = getattr(_ACTIVE, "state", None)
    _ACTIVE.state = {"shape": tuple(live.shape),  # index None: all live, the modules run as they are
                     "index": None if all_live else live.reshape(-1).nonzero().squeeze(1),
                     "read": None if read is None else read.reshape(-1).nonzero().squeeze(1), "stack": []}
    try:
        yield
    finally:
        _ACTIVE.state = prev


@contextmanager
def _switched_off(*what: str) -> Iterator[None]:
    prev = getattr(_ACTIVE, "off", set())
    _ACTIVE.off = prev | set(what)
    try:
        yield
    finally:
        _ACTIVE.off = prev


def padded() -> Any:
    """Within the block, in this thread, `unpadded` runs everything at every position: the
    reference that tests and benchmarks/student_step.py compare with."""
    return _switched_off("padding", "last_layer")


def whole_last_layer() -> Any:
    """Within the block, in this thread, `unpadded` skips the positions that are not live but runs
    the last layer at every live position (benchmarks/student_step.py's reference for the read positions' saving)."""
    return _switched_off("last_layer")
