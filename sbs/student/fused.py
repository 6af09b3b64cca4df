"""A causal student's elementwise chains run as fused kernels in training steps (torch.compile), and
its LoRA layers as one function each.

Once the linear layers skip the padding (`sbs.student.unpad`), most of what is left of a Gemma 3
training step outside the matrix products is chains of small elementwise kernels, each reading
and writing whole activations, forward and backward: the RMSNorms (four per layer around attention
and the MLP, plus one on the queries and one on the keys; `x * rsqrt(mean(x^2) + eps) * (1 + w)`
is about 7 kernels forward and 10 backward) and the gated MLP's `gelu_tanh(gate) * up`. Inside
`fused()` those modules run as kernels inductor generates from the same formulas, forward and
backward, once per process (dynamic shapes: a few kernels serve every batch and length; inductor's
on-disk cache serves later processes).

A LoRA layer (peft's `lora.Linear`: y = x W^T + b + s (x A^T) B^T) runs as one autograd function,
`LoraLinear`, in place of peft's forward of four modules. Its adapter's product is added into the
base layer's output by the matrix product itself (`addmm_`, alpha = s) instead of by a scaling and
an addition over the whole output, forward and backward, and its backward computes B's gradient as
(x A^T)^T dY, the layout that runs fastest. It takes one plain adapter only (one active, no
dropout, no DoRA or other variant, no LoRA bias, an `nn.Linear` base, one dtype, no autocast, no
ZeRO-3 partitioning, whose hooks gather a module's parameters only when that module is called);
any other layer runs peft's forward.

Exact up to float rounding: the same operations, in fp32, computed in other kernels.
tests/test_fused.py compares outputs and gradients with the modules' own forward.

Only modules whose formula is known are fused (`NORMS`, `MLPS`: the Gemma 3 family; LoRA layers
of any causal student); every other module runs as it is. Like `sbs.student.unpad`, the modules'
forwards are replaced once per model and the fused kernels act only in the thread that entered
`fused` and only where gradients are recorded: Serve replicas, generation and evaluation run the
modules' own forward. The first call compiles (about half a minute on 2 cores, a few seconds from
inductor's cache); a machine where compilation fails (no C++ compiler) falls back to the eager
forward with one warning. `model.fused_kernels=false` turns it off.
"""
from __future__ import annotations

import logging
import threading
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from sbs.student.vocab import unwrap

log = logging.getLogger(__name__)

_ACTIVE = threading.local()
_LOCK = threading.Lock()
_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}
_BROKEN: list[str] = []  # the compile error, once compilation failed in this process


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm (transformers' Gemma3RMSNorm): normalised in fp32, scaled by (1 + w)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1.0 + weight.float())).type_as(x)


def gelu_tanh_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation with Gemma's GELU (tanh approximation)."""
    return F.gelu(gate, approximate="tanh") * up


# class name -> the formula its forward computes (checked against it by tests/test_fused.py)
NORMS = {"Gemma3RMSNorm": gemma_rms_norm}
MLPS = {"Gemma3MLP": gelu_tanh_gate}  # down_proj(act(gate_proj(x)) * up_proj(x)), act GELU (tanh)


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T and its gradients, for x (..., K), W (N, K), b (N) or None,
    A (r, K), B (N, r): peft's LoRA layer with one plain adapter (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scale: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        xa = torch.mm(x2, a.t())
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(xa, b.t(), alpha=scale)
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scale = scale
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, a, b, xa = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        dy2 = dy.reshape(-1, dy.shape[-1])
        dxa = torch.mm(dy2, b).mul_(ctx.scale)  # the gradient at x A^T
        dx = dw = dbias = da = db = None
        if need_x:
            dx = torch.mm(dy2, weight).addmm_(dxa, a).view(*dy.shape[:-1], weight.shape[1])
        if need_w:  # a trained base weight (LoRA leaves it frozen)
            dw = torch.mm(dy2.t(), x2)
        if need_bias:  # False where there is no bias
            dbias = dy2.sum(0)
        if need_a:
            da = torch.mm(dxa.t(), x2)
        if need_b:
            db = torch.mm(xa.t(), dy2).t().mul_(ctx.scale)
        return dx, dw, dbias, da, db, None


def _lora_parts(m: torch.nn.Module, x: torch.Tensor) -> tuple[Any, ...] | None:
    """(W, b, A, B, s) of a peft LoRA layer that `LoraLinear` computes exactly as peft would, else None."""
    if m.disable_adapters or m.merged or len(m.active_adapters) != 1:
        return None
    name = m.active_adapters[0]
    if name not in m.lora_A or name in getattr(m, "lora_variant", {}):
        return None
    lora_a, lora_b, base = m.lora_A[name], m.lora_B[name], m.get_base_layer()
    if (type(base) is not torch.nn.Linear or not isinstance(m.lora_dropout[name], torch.nn.Identity)
            or lora_a.bias is not None or lora_b.bias is not None):
        return None
    w, a, b = base.weight, lora_a.weight, lora_b.weight
    if any(hasattr(p, "ds_id") for p in (w, a, b)):  # ZeRO-3: gathered only when their module is called
        return None
    if not (x.dtype == w.dtype == a.dtype == b.dtype) or torch.is_autocast_enabled(x.device.type):
        return None
    return w, base.bias, a, b, float(m.scaling[name])


def _kernel(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` compiled (dynamic shapes), or `fn` itself once compilation failed in this process."""
    if _BROKEN:
        return fn
    with _LOCK:
        if fn.__name__ not in _COMPILED:
            _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__name__]


def _run(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    try:
        return _kernel(fn)(*args)
    except Exception as e:  # noqa: BLE001 - inductor raises many kinds (no compiler, no headers, ...)
        if _BROKEN or not _compile_error(e):
            raise
        _BROKEN.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        log.warning("sbs.student.fused: torch.compile failed (%s); the student trains with the eager "
                    "kernels (set model.fused_kernels=false to skip the attempt)", _BROKEN[0])
        return fn(*args)


def _compile_error(e: Exception) -> bool:
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError
    except ImportError:  # pragma: no cover - torch >= 2.0 has both
        return False
    return isinstance(e, (BackendCompilerFailed, TorchRuntimeError, OSError))


def _on() -> bool:
    return getattr(_ACTIVE, "on", False) and not getattr(_ACTIVE, "off", False) and torch.is_grad_enabled()


def _norm_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not _on():
        return type(self).forward(self, x)
    return _run(NORMS[type(self).__name__], x, self.weight, float(self.eps))


def _mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not _on():
        return type(self).forward(self, x)
    return self.down_proj(_run(MLPS[type(self).__name__], self.gate_proj(x), self.up_proj(x)))


def _lora_forward(self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    parts = _lora_parts(self, x) if _on() and not args and not kwargs else None
    if parts is None:
        return type(self).forward(self, x, *args, **kwargs)
    return LoraLinear.apply(x, *parts)


def _is_lora_linear(m: torch.nn.Module) -> bool:
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # pragma: no cover - peft is a core dependency
        return False
    return type(m) is Linear


def fusable(model: Any) -> list[torch.nn.Module]:
    """The modules of the model that `fused` runs as fused kernels or functions, in model order."""
    out = []
    for m in unwrap(model).modules():
        name = type(m).__name__
        if name in NORMS or (name in MLPS and _gelu_tanh(getattr(m, "act_fn", None))) or _is_lora_linear(m):
            out.append(m)
    return out


def _gelu_tanh(act: Any) -> bool:
    from transformers.activations import GELUTanh

    return isinstance(act, GELUTanh) or (isinstance(act, torch.nn.GELU) and act.approximate == "tanh")


def install(model: Any) -> int:
    """Give the model's fusable modules their fused forward (once; it acts only inside `fused()`).
    Returns how many modules have it."""
    body = unwrap(model)
    mods = fusable(body)
    with _LOCK:
        if not getattr(body, "_sbs_fused", False):
            for m in mods:
                forward = (_norm_forward if type(m).__name__ in NORMS else _lora_forward if _is_lora_linear(m)
                           else _mlp_forward)
                m.forward = types.MethodType(forward, m)
            body._sbs_fused = True
    return len(mods)


@contextmanager
def fused() -> Iterator[None]:
    """Within the block, in this thread, the modules `install` gave a fused forward run fused
    kernels wherever gradients are recorded; everything else runs as it is."""
    with _flag(on=True):
        yield


@contextmanager
def eager() -> Iterator[None]:
    """Within the block, in this thread, `fused()` runs the modules' own forward: the reference
    that tests and benchmarks/student_step.py compare with."""
    with _flag(off=True):
        yield


@contextmanager
def _flag(**kw: bool) -> Iterator[None]:
    prev = {k: getattr(_ACTIVE, k, False) for k in kw}
    for k, v in kw.items():
        setattr(_ACTIVE, k, v)
    try:
        yield
    finally:
        for k, v in prev.items():
            setattr(_ACTIVE, k, v)
