"""Fused training kernels (sbs.student.fused): the formulas are the modules' own, the fused step's
losses and gradients are the eager step's, and nothing outside a training step changes."""
from __future__ import annotations

import pytest
import torch

from sbs.student import fused
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig
from sbs.student.losses import compute_loss
from sbs.student.models import build_student, build_trainable
from tests.test_unpad import ROWS, meta  # the same two rows of unequal length


@pytest.fixture(scope="module", params=[0, 4], ids=["full", "lora"])
def student(request):
    model, tok, _ = build_trainable(ModelConfig(name="tiny-gemma3", lora_r=request.param, fused_kernels=True))
    return model.train(), tok


def test_every_norm_and_mlp_of_gemma3_is_fused_and_nothing_else():
    model, _, _ = build_student(ModelConfig(name="tiny-gemma3"))
    names = {type(m).__name__ for m in fused.fusable(model)}
    assert names == {"Gemma3RMSNorm", "Gemma3MLP"}
    n_layers = model.config.num_hidden_layers
    # per layer: input, post-attention, pre- and post-feedforward norms, the query and key norms; the final norm
    assert sum(type(m).__name__ == "Gemma3RMSNorm" for m in fused.fusable(model)) == 6 * n_layers + 1
    gpt2, _, _ = build_student(ModelConfig(name="tiny-gpt2"))
    assert fused.fusable(gpt2) == []  # unknown formulas run as they are


def test_the_formulas_are_the_modules_own():
    """Guards against a transformers upgrade changing a module's computation under sbs."""
    model, _, _ = build_student(ModelConfig(name="tiny-gemma3"))
    torch.manual_seed(0)
    for m in fused.fusable(model):
        if type(m).__name__ in fused.NORMS:
            with torch.no_grad():
                m.weight.normal_()
            x = torch.randn(3, 5, m.weight.shape[0])
            assert torch.equal(fused.NORMS[type(m).__name__](x, m.weight, float(m.eps)), m(x))
        else:
            x = torch.randn(3, 5, model.config.hidden_size)
            want = m.down_proj(fused.MLPS[type(m).__name__](m.gate_proj(x), m.up_proj(x)))
            assert torch.equal(want, m(x))


@pytest.mark.parametrize("method", ["standard", "multitask"])
def test_the_fused_step_has_the_eager_steps_loss_and_gradients(student, method):
    model, tok = student
    batch = Collator(tok, meta(method))(ROWS)

    def loss_and_grads():
        model.zero_grad()
        loss = compute_loss(model, batch, method, 0.5)[0]  # enters fused() itself
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    seen: list[str] = []
    lora_calls: list[int] = []
    compiled, apply = fused._kernel, fused.LoraLinear.apply
    try:  # count the calls that take the fused path
        fused._kernel = lambda fn: (seen.append(fn.__name__), compiled(fn))[1]
        fused.LoraLinear.apply = lambda *a: (lora_calls.append(1), apply(*a))[1]
        loss, grads = loss_and_grads()
    finally:
        fused._kernel = compiled
        fused.LoraLinear.apply = apply
    with fused.eager():
        ref_loss, ref_grads = loss_and_grads()
    assert set(seen) == {"gemma_rms_norm", "gelu_tanh_gate"}
    # every LoRA layer (7 a layer: the attention's 4 projections, the MLP's 3) took the function once
    assert len(lora_calls) == (7 * model.config.num_hidden_layers if student_lora(model) else 0)
    assert not fused._BROKEN, fused._BROKEN
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def student_lora(model) -> bool:
    return any("lora_A" in n for n, _ in model.named_parameters())


def peft_layer(r: int = 4, bias: bool = False, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(12, 20, bias=bias)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = get_peft_model(One(), LoraConfig(r=r, lora_alpha=8, lora_dropout=dropout, target_modules=["proj"]))
    layer = model.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # peft starts B at zero: the adapter would add nothing
    fused.install(model)
    return model, layer


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("frozen_base", [True, False])
def test_the_lora_function_has_pefts_output_and_gradients(bias, frozen_base):
    model, layer = peft_layer(bias=bias)
    for p in layer.base_layer.parameters():
        p.requires_grad_(not frozen_base)
    x0 = torch.randn(3, 5, 12)

    def out_and_grads():
        model.zero_grad()
        x = x0.clone().requires_grad_()
        y = layer(x)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        return y.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    with fused.fused():
        assert fused._lora_parts(layer, x0) is not None
        y, gx, grads = out_and_grads()
    ref_y, ref_gx, ref_grads = out_and_grads()  # outside fused(): peft's own forward
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 + (not frozen_base) * (1 + bias)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-5, msg=n)


def test_a_lora_layer_the_function_does_not_cover_runs_pefts_forward():
    x = torch.randn(2, 12)
    with fused.fused():
        _, plain = peft_layer()
        assert fused._lora_parts(plain, x) is not None
        _, dropout = peft_layer(dropout=0.1)  # dropout on the adapter's input
        assert fused._lora_parts(dropout, x) is None
        assert fused._lora_parts(plain, x.double()) is None  # another dtype than the weights'
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused._lora_parts(plain, x) is None
        plain.enable_adapters(False)
        assert fused._lora_parts(plain, x) is None
        plain.enable_adapters(True)
        plain.merge()  # the adapter is in the base weight
        assert fused._lora_parts(plain, x) is None


def test_no_fused_kernel_runs_without_gradients_or_outside_a_step(student):
    model, tok = student
    batch = Collator(tok, meta("standard"))(ROWS)
    seen: list[str] = []
    compiled = fused._kernel
    try:
        fused._kernel = lambda fn: (seen.append(fn.__name__), compiled(fn))[1]
        with torch.no_grad():  # evaluation and choice scoring
            compute_loss(model, batch, "standard", 0.5)
        b = batch["label"]
        model(input_ids=b["input_ids"]).logits.sum().backward()  # HF's own forward, outside sbs's step
    finally:
        fused._kernel = compiled
    assert seen == []


NO_COMPILER = """
import json, logging, torch
from sbs.student import fused
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig
from sbs.student.losses import compute_loss
from sbs.student.models import build_trainable
from tests.test_unpad import ROWS, meta
logging.basicConfig(level=logging.WARNING)
model, tok, _ = build_trainable(ModelConfig(name="tiny-gemma3", lora_r=4, fused_kernels=True))
batch = Collator(tok, meta("standard"))(ROWS)
loss = compute_loss(model.train(), batch, "standard", 0.5)[0]
loss.backward()
with fused.eager():
    ref = compute_loss(model, batch, "standard", 0.5)[0]
print(json.dumps({"broken": fused._BROKEN, "equal": torch.equal(loss.detach(), ref.detach())}))
"""


def test_a_machine_that_cannot_compile_trains_with_the_eager_kernels(tmp_path):
    """No C++ compiler for inductor (its own process: inductor caches the compiler it found): one
    warning, then the step runs the modules' own forward."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, CXX="/nonexistent/c++", TORCHINDUCTOR_FX_GRAPH_CACHE="0",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path))  # a cached kernel would need no compiler
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", NO_COMPILER], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["broken"] and res["equal"], res
    said = [line for line in out.stderr.splitlines() if "torch.compile failed" in line]
    assert len(said) == 1 and "model.fused_kernels=false" in said[0], out.stderr[-3000:]
