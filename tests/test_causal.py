"""Causal students: the shared-prefix multi-task pass and target-only logits are exact.

Expected values come from plain, separate forward passes over each task's full sequence with
the model's own full-vocabulary logits, computed here without `sbs.student.causal`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbs.export import ExportMeta
from sbs.predict import Student
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig
from sbs.student.losses import compute_loss
from sbs.student.models import build_student

ROWS = [{"id": "a", "input": "Tom has 3 apples and buys 2.", "label": "(3 + 2)", "rationale": "3 + 2 = 5."},
        {"id": "b", "input": "Ann had 10 pens, lost 4 of them on the way home.", "label": "(10 - 4)",
         "rationale": "She lost 4 of 10, so 6 are left."}]


def meta(method: str) -> ExportMeta:
    return ExportMeta(method=method, dataset="svamp", model_kind="causal", max_input_length=64,
                      max_label_length=16, max_rationale_length=80)  # no truncation here


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma3"])
def causal(request):
    model, tok, kind = build_student(ModelConfig(name=request.param))
    assert kind == "causal"
    return model.eval(), tok


def plain_loss(model, tok, prompts: list[str], markers: list[str], targets: list[str]) -> torch.Tensor:
    """Mean target-token CE from one unpadded full forward per row (HF's own logits)."""
    nll, n = 0.0, 0
    for p, mk, t in zip(prompts, markers, targets):
        prompt = tok(p)["input_ids"] + tok(mk, add_special_tokens=False)["input_ids"]
        target = tok(" " + t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + target])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        nll = nll + F.cross_entropy(logits, torch.tensor(target), reduction="sum")
        n += len(target)
    return nll / n


def test_multitask_one_pass_equals_two_passes(causal):
    model, tok = causal
    m, lam = meta("multitask"), 0.5
    batch = Collator(tok, m)(ROWS)
    assert set(batch) == {"joint"}  # one row per example: prefix + label branch + rationale branch
    xs = [r["input"] for r in ROWS]
    with torch.no_grad():
        loss, parts = compute_loss(model, batch, "multitask", lam)
        want_label = plain_loss(model, tok, xs, [m.causal_separator] * 2, [r["label"] for r in ROWS])
        want_rat = plain_loss(model, tok, xs, [m.causal_explain_separator] * 2, [r["rationale"] for r in ROWS])
    assert parts["label_loss"] == pytest.approx(want_label.item(), rel=1e-4)
    assert parts["rationale_loss"] == pytest.approx(want_rat.item(), rel=1e-4)
    assert loss.item() == pytest.approx(want_label.item() + lam * want_rat.item(), rel=1e-4)


def test_multitask_gradients_equal_two_passes(causal):
    model, tok = causal
    m = meta("multitask")
    xs = [r["input"] for r in ROWS]
    model.zero_grad()
    compute_loss(model, Collator(tok, m)(ROWS), "multitask", 1.0)[0].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (plain_loss(model, tok, xs, [m.causal_separator] * 2, [r["label"] for r in ROWS])
     + plain_loss(model, tok, xs, [m.causal_explain_separator] * 2, [r["rationale"] for r in ROWS])).backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-3, atol=1e-6, msg=n)
    model.zero_grad()


@pytest.mark.parametrize("method", ["standard", "single_task"])
def test_single_branch_loss_equals_plain_forward(causal, method):
    model, tok = causal
    m = meta(method)
    targets = [r["label"] if method == "standard" else m.single_task_target(r["rationale"], r["label"])
               for r in ROWS]
    with torch.no_grad():
        loss, parts = compute_loss(model, Collator(tok, m)(ROWS), method)
        want = plain_loss(model, tok, [r["input"] for r in ROWS], [m.causal_separator] * 2, targets)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert "rationale_loss" not in parts


def test_choice_scores_equal_plain_forward_and_rank(causal):
    model, tok = causal
    student = Student(model, tok, meta("standard"))
    cands = [["entailment", "neutral", "contradiction"], ["yes", "no"]]
    xs = [r["input"] for r in ROWS]
    scores = student.score_choices(xs, cands)
    assert [len(s) for s in scores] == [3, 2]  # ragged candidate lists keep their own lengths
    with torch.no_grad():
        for x, cs, got in zip(xs, cands, scores):
            for c, g in zip(cs, got):
                n = len(tok(" " + c, add_special_tokens=False)["input_ids"]) + 1
                want = -plain_loss(model, tok, [x], ["\nAnswer:"], [c]).item() * n
                assert g == pytest.approx(want, rel=1e-4)
    preds = student.predict(xs, candidates=cands)
    for p, cs, sc in zip(preds, cands, scores):
        assert p.label == cs[max(range(len(cs)), key=sc.__getitem__)]
        assert set(p.scores) == set(cs)


def test_single_task_choice_scores_keep_the_candidate_after_a_full_length_rationale(causal):
    """An untrained single_task student writes a rationale as long as its limit: the candidate
    after it must still be scored (a cut at the training length once dropped it, and every
    candidate then scored 0)."""
    model, tok = causal
    m = ExportMeta(method="single_task", dataset="cqa", model_kind="causal", max_input_length=64,
                   max_label_length=4, max_rationale_length=8)
    cands = [["tree", "sky", "river"]]
    rat = "a long rationale that runs well past the eight tokens this student was trained with"
    student = Student(model, tok, m)
    got = student.score_choices([ROWS[0]["input"]], cands, [rat])[0]
    with torch.no_grad():
        for c, g in zip(cands[0], got):
            target = m.single_task_target(rat, c)
            n = len(tok(m.causal_target(target), add_special_tokens=False)["input_ids"]) + 1
            full = -plain_loss(model, tok, [ROWS[0]["input"]], [m.causal_separator], [target]).item() * n
            assert g < 0 and g > full  # the ending only: less negative than the whole target
    assert len(set(got)) == len(got), got  # the candidates differ, so do their scores
    preds = student.predict([ROWS[0]["input"]], candidates=cands)
    assert all(v < 0 for v in preds[0].scores.values()) and set(preds[0].scores) == set(cands[0])


def test_left_padded_generation_matches_one_at_a_time(causal):
    """Batched (left-padded) label generation gives each row the tokens a plain unpadded greedy
    generate() of its own prompt gives (prompts built here as in `plain_loss`, not by sbs)."""
    model, tok = causal
    m = meta("standard")
    student = Student(model, tok, m)
    xs = [r["input"] for r in ROWS]
    batched = [p.raw for p in student.predict(xs, batch_size=2)]
    alone = [student.predict([x], batch_size=1)[0].raw for x in xs]
    assert batched == alone
    plain = []
    with torch.no_grad():
        for x in xs:
            ids = torch.tensor([tok(x)["input_ids"] + tok(m.causal_separator, add_special_tokens=False)["input_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=m.max_label_length, pad_token_id=tok.pad_token_id)
            plain.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert all(plain) and batched == plain
