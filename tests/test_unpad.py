"""Position-wise layers on live tokens only (sbs.student.unpad): they do skip the padding and each
branch's EOS, and the losses, scores and gradients are those of a padded pass (test_causal.py
compares the same paths with separate unpadded forward passes per row)."""
from __future__ import annotations

import threading

import pytest
import torch

from sbs.export import ExportMeta
from sbs.student.causal import PAD_SEGMENT, live_positions
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig
from sbs.student.losses import compute_loss
from sbs.student.models import build_trainable
from sbs.student import unpad

ROWS = [{"id": "a", "input": "Is a cat an animal?", "label": "yes", "rationale": "Cats are animals."},
        {"id": "b", "input": "Can a fish that lives in the sea climb a tall tree in the forest?", "label": "no",
         "rationale": "Fish have no limbs to climb with, and they cannot breathe out of water."}]


def meta(method: str) -> ExportMeta:
    return ExportMeta(method=method, dataset="cqa", model_kind="causal", max_input_length=64,
                      max_label_length=16, max_rationale_length=80)


@pytest.fixture(scope="module", params=[("tiny-gemma3", 0), ("tiny-gemma3", 4), ("tiny-gpt2", 4)],
                ids=["gemma3", "gemma3-lora", "gpt2-lora"])
def student(request):
    name, r = request.param
    model, tok, _ = build_trainable(ModelConfig(name=name, lora_r=r, lora_dropout=0.0))
    return model.eval(), tok


def rows_seen(model, fn, modules=None):
    """Run fn(); return the (first two) input dims every hooked module (or each of `modules`) was
    called with."""
    seen, handles = [], []
    for m in modules if modules is not None else unpad.positionwise_modules(model):
        # a forward hook gets the input the module ran on
        handles.append(m.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape[:2]))))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def split_last(model):
    """(the last layer's read-only modules, every other hooked module)"""
    last = unpad.last_layer_modules(model)
    return last, [m for m in unpad.positionwise_modules(model) if all(m is not x for x in last)]


def test_the_last_layer_restricts_its_query_output_projection_and_mlp_never_keys_or_values(student):
    model, _ = student
    last = unpad.last_layer_modules(model)
    paths = {n for n, m in model.named_modules() if any(m is x for x in last)}
    n_layers = model.config.num_hidden_layers
    assert paths and all(f".{n_layers - 1}." in p for p in paths)  # the last layer's only
    names = {p.rsplit(".", 1)[-1] for p in paths}
    if model.config.model_type == "gpt2":
        assert names == {"mlp"}  # c_attn computes keys and values too: left whole
    else:
        assert names == {"q_proj", "o_proj", "mlp"}


def test_the_hooked_modules_are_the_mlps_and_linear_layers_outside_them_not_the_head(student):
    model, _ = student
    mods = unpad.positionwise_modules(model)
    paths = [n for n, m in model.named_modules() if any(m is x for x in mods)]
    names = {n.rsplit(".", 1)[-1] for n in paths}
    head = model.get_output_embeddings()
    assert all(m is not head for m in mods)
    assert "mlp" in names and not names & {"lm_head", "gate_proj", "up_proj", "down_proj", "c_fc"}
    assert names - {"mlp"}  # the attention projections
    # top-most only: no hooked module inside another (an MLP's projections, a LoRA wrapper's base layer)
    assert not [a for a in paths for b in paths if a.startswith(b + ".")]
    assert "base_layer" not in names  # a LoRA-adapted projection is hooked whole, base and adapter


@pytest.mark.parametrize("method", ["standard", "multitask"])
def test_loss_and_gradients_equal_the_padded_pass_and_padding_is_skipped(student, method):
    model, tok = student
    batch = Collator(tok, meta(method))(ROWS)
    b = next(iter(batch.values()))
    real = b["segments"] != PAD_SEGMENT
    assert not bool(real.all())  # the rows differ in length: there is padding to skip
    # less each branch's EOS, which nothing reads (every row of ROWS has every branch)
    n_live = int(real.sum()) - len(ROWS) * int(b["segments"].max())

    def loss_and_grads():
        model.zero_grad()
        loss = compute_loss(model, batch, method, 0.5)[0]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    read = torch.zeros_like(b["labels"], dtype=torch.bool)
    read[:, :-1] = b["labels"][:, 1:] != -100  # the positions the LM head reads: before each target
    last, rest = split_last(model)
    out: dict[str, tuple] = {}
    seen = rows_seen(model, lambda: out.setdefault("unpadded", loss_and_grads()), rest)
    assert seen and set(seen) == {(1, n_live)}  # every other hooked module ran on the live tokens only
    seen = rows_seen(model, lambda: out.setdefault("read", loss_and_grads()), last)
    assert seen and set(seen) == {(1, int(read.sum()))} and read.sum() < n_live  # the last layer's: read ones
    with unpad.whole_last_layer():
        seen = rows_seen(model, lambda: out.setdefault("whole", loss_and_grads()))
    assert set(seen) == {(1, n_live)}
    with unpad.padded():
        seen = rows_seen(model, lambda: out.setdefault("padded", loss_and_grads()))
    assert set(seen) == {tuple(real.shape)}
    want, want_grads = out["padded"]
    for kind in ("unpadded", "read", "whole"):
        loss, grads = out[kind]
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        assert grads.keys() == want_grads.keys() and grads
        for n in grads:
            torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=f"{kind}: {n}")
    model.zero_grad()


def test_without_padding_the_last_layer_still_runs_on_the_read_positions_only(student):
    model, tok = student
    rows = [dict(ROWS[0]), dict(ROWS[0], id="c")]  # equal lengths: no padding at all
    batch = Collator(tok, meta("standard"))(rows)
    b = batch["label"]
    assert bool((b["segments"] != PAD_SEGMENT).all())
    n_read = int((b["labels"] != -100).sum())
    last, rest = split_last(model)
    with torch.no_grad():
        seen_last = rows_seen(model, lambda: compute_loss(model, batch, "standard"), last)
        seen_rest = rows_seen(model, lambda: compute_loss(model, batch, "standard"), rest)
        with unpad.padded():
            want = compute_loss(model, batch, "standard")[0]
        got = compute_loss(model, batch, "standard")[0]
    assert set(seen_last) == {(1, n_read)}
    assert set(seen_rest) == {(1, b["input_ids"].numel() - len(rows))}  # every token but the EOS
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_read_position_must_be_a_live_one(student):
    model, _ = student
    live = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="read position is not a live one"):
        with unpad.unpadded(model, live, read=torch.tensor([[False, False, True]])):
            pass


def test_live_positions_are_the_prefix_and_each_branch_up_to_its_last_read_position():
    P, X = 0, PAD_SEGMENT
    segments = torch.tensor([[P, P, 1, 1, 1, 2, 2, 2, 2, X],    # two branches, then padding
                             [P, P, P, 1, 1, 1, 1, X, X, X]])   # one branch
    keep = torch.zeros_like(segments, dtype=torch.bool)
    keep[0, [2, 3, 5, 6, 7]] = True  # a branch is marker, targets, EOS: the marker and the targets
    keep[1, [3, 4, 5]] = True        # predict the next target (the last one predicts the EOS)
    want = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 0, 0],     # each branch's EOS predicts nothing
                         [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(live_positions(segments, keep), want)
    keep[1] = False  # a row nothing reads: its prefix is still live (branch keys), its branch is not
    assert live_positions(segments, keep)[1].tolist() == [True] * 3 + [False] * 7
    keep[0, [2, 3]] = False  # an earlier branch with nothing read, a later one read: the first is dead
    assert live_positions(segments, keep)[0].tolist() == [True] * 2 + [False] * 3 + [True] * 3 + [False] * 2


def test_only_the_thread_that_entered_skips_padding(student):
    """A Serve replica may score in one thread while it generates in another with the same model."""
    model, tok = student
    ids = tok(["a short row", "a somewhat longer row of text here"], return_tensors="pt", padding=True)["input_ids"]
    real = torch.zeros(ids.shape, dtype=torch.bool)
    real[0, :2] = True
    real[1] = True
    other: list = []
    entered, done = threading.Event(), threading.Event()

    def elsewhere():
        entered.wait()
        other.extend(rows_seen(model, lambda: model(input_ids=ids)))
        done.set()

    t = threading.Thread(target=elsewhere)
    t.start()
    with torch.no_grad(), unpad.unpadded(model, real):
        entered.set()
        done.wait(60)
        mine = rows_seen(model, lambda: model(input_ids=ids))
    t.join()
    assert set(other) == {tuple(ids.shape)}
    assert set(mine) == {(1, int(real.sum()))}


def test_a_module_returning_a_tuple_gets_its_first_element_scattered_and_the_rest_as_computed():
    """A mixture-of-experts MLP returns (hidden states, router logits): the first is scattered back
    to (B, T, ...), the rest stays what the module computed on the live tokens."""
    class MoE(torch.nn.Module):
        def forward(self, x):
            return x * 2, x.sum(-1)

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MoE()

        def get_output_embeddings(self):
            return None

    body = Body()
    x = torch.randn(2, 3, 4)
    real = torch.tensor([[True, True, False], [True, True, True]])
    with unpad.unpadded(body, real):
        hidden, router = body.mlp(x)
    assert hidden.shape == (2, 3, 4) and router.shape == (1, 5)
    torch.testing.assert_close(hidden[real], 2 * x[real])
    assert bool((hidden[~real] == 0).all())
    torch.testing.assert_close(router[0], x[real].sum(-1))
