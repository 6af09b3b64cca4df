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


def test_single_task_choice_scores_skip_the_shared_rationale(gemma):
    """A generated rationale, re-encoded, may hold tokens outside the vocabulary: every candidate
    shares it, so only what follows it is scored (exactly, over the vocabulary)."""
    model, tok = gemma
    vocab = task_vocab(cfg("method.name=single_task"), ROWS)
    m = meta("single_task", vocab)
    student = Student(model, tok, m)
    x, rat, cands = ROWS[0]["input"], "zebra quiz 3 + 2 = 5.", ["(3 + 2)", "(10 - 4)"]
    assert not set(tok(" " + rat, add_special_tokens=False)["input_ids"]) <= set(vocab)
    got = student.score_choices([x], [cands], [rat])[0]
    prompt = tok(x)["input_ids"] + tok(m.causal_separator, add_special_tokens=False)["input_ids"]
    targets = [tok(m.causal_target(m.single_task_target(rat, c)), add_special_tokens=False)["input_ids"]
               + [tok.eos_token_id] for c in cands]
    shared = next(i for i, (a, b) in enumerate(zip(*targets)) if a != b)
    v = torch.tensor(vocab)
    for score, target in zip(got, targets):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1]
        rest = torch.tensor(target[shared:])
        lp = torch.log_softmax(logits[shared:, v], -1).gather(-1, torch.searchsorted(v, rest)[:, None]).sum()
        assert score == pytest.approx(lp.item(), rel=1e-5)


def test_candidates_the_vocabulary_cannot_produce_are_named(gemma, tmp_path):
    from sbs.serve.app import InputGate
    from sbs.serve.config import StudentSpec
    from sbs.serve.schemas import ClientError
    from sbs.student.vocab import outside

    model, tok = gemma
    vocab = task_vocab(cfg("method.name=standard"), ROWS)
    m = meta("standard", vocab)
    assert outside(tok, m, "(3 + 2)") == [] and outside(tok, meta("standard", None), "zebra") == []
    assert outside(tok, m, "zebra") and set(outside(tok, m, "zebra")).isdisjoint(vocab)
    with pytest.raises(ValueError, match=r"inputs\[0\]: every candidate needs a token outside"):
        Student(model, tok, m).predict([ROWS[0]["input"]], candidates=[["zebra", "quiz"]])
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m.dataset = "cqa"
    m.write(tmp_path)
    gate = InputGate(StudentSpec(dataset="cqa", export_dir=str(tmp_path)))
    assert gate.candidates("inputs[0]", {"question": "q", "choices": ["(3 + 2)", "(10 - 4)"]})
    with pytest.raises(ClientError) as e:
        gate.candidates("inputs[0]", {"question": "q", "choices": ["(3 + 2)", "zebra"]})
    assert e.value.status == 422 and e.value.field == "inputs[0].choices[1]" and "'zebra'" in e.value.message


def test_the_head_is_cut_for_the_calling_thread_only_and_blocks_nest(gemma):
    import threading

    from sbs.student.vocab import restricted_head

    model, _ = gemma
    head = model.get_output_embeddings()
    h = torch.randn(2, head.in_features)
    full = head(h)
    sentinel = []
    head.forward = lambda x: sentinel.append(1) or type(head).forward(head, x)  # one set before: kept
    a, b = torch.tensor([1, 5, 9]), torch.tensor([2, 3])
    seen: dict[str, torch.Tensor] = {}
    with restricted_head(model, a):
        torch.testing.assert_close(head(h), full[:, a])
        with restricted_head(model, b):
            torch.testing.assert_close(head(h), full[:, b])
            t = threading.Thread(target=lambda: seen.update(other=head(h)))
            t.start()
            t.join()
        torch.testing.assert_close(head(h), full[:, a])
    torch.testing.assert_close(seen["other"], full)  # another thread: the whole head, the earlier forward
    assert sentinel and head(h).shape == full.shape
    del head.forward
    assert "forward" not in head.__dict__


def test_kind_auto_hub_seq2seq_is_refused_on_the_driver(tmp_path):
    model, tok, _ = build_student(ModelConfig(name="tiny-t5"))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="only for causal students .* is seq2seq"):
        task_vocab(cfg(f"model.name={tmp_path}"), ROWS)


def test_resume_refuses_a_checkpoint_of_another_vocabulary_or_layout(tmp_path):
    from sbs.student.loop import check_resumable

    check_resumable(meta("standard", [1, 2, 3]), meta("standard", [1, 2, 3]), tmp_path)
    with pytest.raises(ValueError, match="3 tokens, this run has the whole vocabulary"):
        check_resumable(meta("standard", [1, 2, 3]), meta("standard", None), tmp_path)
    before = meta("standard", None).model_copy(update={"choice_layout": "before"})
    with pytest.raises(ValueError, match="data.choice_layout=before, this run has after"):
        check_resumable(before, meta("standard", None), tmp_path)
