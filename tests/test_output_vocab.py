"""A task output vocabulary (`model.output_vocab=task`) is exact: the same distribution in
training, generation and choice scoring, each checked against the model's own full logits
restricted to the vocabulary by hand here."""
from __future__ import annotations

import pytest
import torch

from sbs.config import ConfigError
from sbs.export import ExportMeta
from sbs.predict import Student
from sbs.student.collate import Collator
from sbs.student.config import ModelConfig, load_train_config
from sbs.student.losses import compute_loss
from sbs.student.models import build_student
from sbs.student.vocab import suppressed, task_vocab

ROWS = [{"id": "a", "input": "Tom has 3 apples and buys 2.", "label": "(3 + 2)", "rationale": "3 + 2 = 5."},
        {"id": "b", "input": "Ann had 10 pens, lost 4.", "label": "(10 - 4)", "rationale": "10 - 4 = 6 left."}]


def cfg(*over: str):
    return load_train_config("configs/student/base.yaml", ["model.name=tiny-gemma3", "model.output_vocab=task",
                                                              "data.dataset=svamp", "data.rationales=unread", *over])


@pytest.fixture(scope="module")
def gemma():
    torch.manual_seed(0)
    model, tok, _ = build_student(ModelConfig(name="tiny-gemma3"))
    return model.eval(), tok


def meta(method: str, vocab: list[int] | None) -> ExportMeta:
    return ExportMeta(method=method, dataset="svamp", model_kind="causal", max_input_length=64,
                      max_label_length=16, max_rationale_length=40, output_vocab=vocab)


def hand_loss(model, batch, vocab: list[int]) -> torch.Tensor:
    """Mean target CE per branch from the model's own full-vocabulary logits, columns cut to `vocab`."""
    from sbs.student.causal import branch_attention

    b = batch["joint"]
    logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                   attention_mask=branch_attention(model, b["segments"], b["position_ids"])).logits
    v = torch.tensor(vocab)
    lab, seg = b["labels"][:, 1:], b["segments"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1][..., v], -1)
    pos = torch.searchsorted(v, lab.clamp(min=0))
    tok_lp = logp.gather(-1, pos[..., None])[..., 0]
    return sum(-tok_lp[(lab != -100) & (seg == k)].mean() for k in (1, 2))


def test_task_vocab_holds_every_training_token_and_is_a_strict_subset(gemma):
    _, tok = gemma
    c = cfg("method.name=multitask")
    vocab = task_vocab(c, ROWS)
    assert vocab == sorted(set(vocab)) and tok.eos_token_id in vocab
    for r in ROWS:
        for text in (r["input"], " " + r["label"], " " + r["rationale"], "\nAnswer:", "\nExplanation:"):
            assert set(tok(text, add_special_tokens=False)["input_ids"]) <= set(vocab), text
    assert len(vocab) < len(tok) // 2  # a byte tokenizer: the rows use a few dozen of its 384 ids


def test_cqa_vocab_covers_every_choice_of_every_split():
    from sbs.datasets import get_dataset
    from sbs.student.models import load_tokenizer

    c = load_train_config("configs/student/base.yaml", ["model.name=tiny-gemma3", "model.output_vocab=task",
                                                          "data.dataset=cqa", "method.name=standard"])
    ds = get_dataset("cqa")
    rows = [{"id": e.id, "input": ds.student_text(e.fields), "label": e.label, "rationale": ""}
            for e in ds.load("train", limit=2)]
    vocab, tok = set(task_vocab(c, rows)), load_tokenizer(c.model)
    for e in ds.load("test"):
        for ch in ds.candidates(e.fields):
            assert set(tok(" " + ch, add_special_tokens=False)["input_ids"]) <= vocab, ch


def test_restricted_loss_and_gradients_equal_the_full_logits_cut_by_hand(gemma):
    model, tok = gemma
    vocab = task_vocab(cfg("method.name=multitask"), ROWS)
    batch = Collator(tok, meta("multitask", vocab))(ROWS)
    assert batch["joint"]["vocab"].tolist() == vocab
    model.zero_grad()
    loss, _ = compute_loss(model, batch, "multitask", 1.0)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    want = hand_loss(model, batch, vocab)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    full, _ = compute_loss(model, Collator(tok, meta("multitask", None))(ROWS), "multitask", 1.0)
    assert full.item() > loss.item()  # the same logits normalised over more tokens
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
    model.zero_grad()


def test_generation_stays_in_the_vocabulary_and_plain_generate_agrees(gemma):
    model, tok = gemma
    vocab = task_vocab(cfg("method.name=standard"), ROWS)
    student = Student(model, tok, meta("standard", vocab))
    xs = [r["input"] for r in ROWS]
    preds = student.predict(xs, batch_size=2)
    for x, p in zip(xs, preds):
        ids = torch.tensor([tok(x)["input_ids"] + tok("\nAnswer:", add_special_tokens=False)["input_ids"]])
        scores = model(input_ids=ids).logits[0, -1]
        first = int(torch.tensor(vocab)[scores[vocab].argmax()])  # the argmax over the vocabulary by hand
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=16, pad_token_id=tok.pad_token_id,
                             suppress_tokens=suppressed(vocab, len(scores)))[0, ids.shape[1]:]
        assert int(out[0]) == first and set(out.tolist()) <= set(vocab) | {tok.pad_token_id}
        assert p.raw == tok.decode(out, skip_special_tokens=True).strip()


def test_choice_scores_normalise_over_the_vocabulary(gemma):
    model, tok = gemma
    vocab = task_vocab(cfg("method.name=standard"), ROWS)
    student = Student(model, tok, meta("standard", vocab))
    x = ROWS[0]["input"]
    inside, outside = "(3 + 2)", "zebra"  # 'z', 'e', 'b', 'r' are in no row
    assert not set(tok(" " + outside, add_special_tokens=False)["input_ids"]) <= set(vocab)
    got = student.score_choices([x], [[inside, outside]])[0]
    assert got[1] == float("-inf")
    prompt = tok(x)["input_ids"] + tok("\nAnswer:", add_special_tokens=False)["input_ids"]
    target = tok(" " + inside, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1]
    v = torch.tensor(vocab)
    lp = torch.log_softmax(logits[:, v], -1).gather(-1, torch.searchsorted(v, torch.tensor(target))[:, None]).sum()
    assert got[0] == pytest.approx(lp.item(), rel=1e-5)


def test_a_training_target_outside_the_vocabulary_is_refused(gemma):
    model, tok = gemma
    vocab = task_vocab(cfg("method.name=standard"), ROWS[:1])
    batch = Collator(tok, meta("standard", vocab))(ROWS[1:])  # row b has tokens row a lacks
    with pytest.raises(ValueError, match="outside the student's output vocabulary"):
        compute_loss(model, batch, "standard")


def test_output_vocab_task_needs_a_causal_student():
    with pytest.raises(ConfigError, match="model.output_vocab=task: only for causal students"):
        task_vocab(cfg("model.name=tiny-t5"), ROWS)
    with pytest.raises(ValueError, match="output_vocab"):
        ExportMeta(method="standard", dataset="svamp", output_vocab=[3, 2])
