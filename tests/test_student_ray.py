"""Student stage on Ray Train (private Ray, 2 CPU workers, tiny T5, a handful of steps each).

- DeepSpeed ZeRO-2 through `sbs train` reduces the loss, exports a model that plain transformers,
  `sbs.predict.Student` and `sbs eval` all load.
- DDP on 1 worker accumulates micro batches to the global batch.
- ZeRO-3 with optimizer and parameter offload trains and resumes; a causal LoRA student (ZeRO-2)
  exports merged, and a rerun of the same run name resumes it and its curve. (A trainer node lost
  mid-run: tests/test_multinode.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbs.cli import main as sbs_main
from sbs.student.config import load_train_config
from sbs.student.recorded import write_accepted

ROOT = Path(__file__).resolve().parents[1]
# One DeepSpeed JIT cache for the whole test run (the Makefile exports the same path).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("student")
    write_accepted("svamp", "train", d / "rationales")
    return d


def tiny(work: Path, name: str, *over: str) -> list[str]:
    """Overrides for a few-step multitask run of the tiny T5 on svamp with short sequences."""
    return ["model.name=tiny-t5", "method.name=multitask", f"data.rationales={work / 'rationales'}",
            "data.max_input_length=48", "data.max_label_length=12", "data.max_rationale_length=24",
            "data.valid_limit=8", "train.global_batch=8", "train.micro_batch=4", "train.lr=3e-3",
            "train.warmup_steps=0", "train.eval_batch=8", "train.log_every=1", "scale.num_workers=2",
            "scale.cpus_per_worker=1", f"run.storage_path={work / 'runs'}", f"run.name={name}", *over]


def train(overrides: list[str]):
    from sbs.student.trainer import train as run

    return run(load_train_config(None, overrides))


@pytest.fixture(scope="module")
def zero2(ray_local, work):
    """DeepSpeed ZeRO-2, 2 workers, 6 steps, through the `sbs train` CLI."""
    over = tiny(work, "zero2", "train.engine=deepspeed", "train.zero_stage=2", "train.steps=6", "train.eval_every=3")
    assert sbs_main(["train", *over]) == 0
    return work / "runs" / "zero2"


def test_deepspeed_zero2_two_workers_reduces_loss(zero2):
    meta = json.loads((zero2 / "export" / "sbs_meta.json").read_text())
    m = meta["metrics"]
    assert m["num_workers"] == 2 and m["global_batch"] == 8 and m["accumulation"] == 1
    assert m["step"] == 6 and m["train_loss"] < 0.7 * m["first_train_loss"]
    assert meta["method"] == "multitask" and meta["prefixes"] == {"predict": "predict: ", "explain": "explain: "}


def test_export_loads_with_plain_transformers_and_student(zero2):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from sbs.predict import Student

    export = zero2 / "export"
    assert (export / "model.safetensors").is_file()
    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    x = "Tom has 3 apples and buys 2."  # with a task prefix, within data.max_input_length (48): no truncation
    plain = {}
    for task, prefix, n in (("label", "predict: ", 12), ("rationale", "explain: ", 24)):  # data.max_*_length
        with torch.no_grad():
            out = model.generate(**tok([prefix + x], return_tensors="pt"), max_new_tokens=n, do_sample=False)
        plain[task] = tok.decode(out[0], skip_special_tokens=True).strip()
    # sbs's inference path (eval, Serve) reads the export as plain transformers does: the same tokens
    student = Student.load(export)
    (pred,) = student.predict([x], explain=True)
    assert (pred.label, pred.rationale) == (plain["label"], plain["rationale"])
    # six steps may leave the text empty: the label task's log-likelihoods compare real numbers
    cands = ["(3 + 2)", "(3 - 2)"]  # shorter than data.max_label_length (12): scored whole
    (got,) = student.score_choices([x], [cands])
    enc = tok(["predict: " + x], return_tensors="pt")
    for c, g in zip(cands, got):
        target = torch.tensor([tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logp = model(**enc, labels=target).logits.log_softmax(-1)[0].gather(-1, target[0, :, None]).sum()
        assert g == pytest.approx(logp.item(), abs=1e-4), c


def test_sbs_eval_cli_writes_json(zero2, tmp_path):
    out = tmp_path / "eval.json"
    assert sbs_main(["eval", str(zero2 / "export"), "--split", "test", "--limit", "6", "--batch-size", "4",
                     "--explain", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["dataset"], res["split"], res["n"], res["method"]) == ("svamp", "test", 6, "multitask")
    assert 0.0 <= res["accuracy"] <= 1.0 and res["correct"] == sum(p["correct"] for p in res["predictions"])
    assert all("rationale" in p for p in res["predictions"])
    labels = [p["pred"] for p in res["predictions"]]
    assert res["distinct_predictions"] == len(set(labels))
    assert res["top_prediction_share"] == pytest.approx(labels.count(res["top_prediction"]) / 6, abs=1e-4)
    assert sbs_main(["eval", str(tmp_path / "nope")]) == 1


def test_one_ddp_worker_accumulates_to_the_global_batch(ray_local, work):
    """DDP, 1 worker, global batch 8 of micro batches 4: two accumulation steps per optimizer step.
    (Worker and node failures: tests/test_multinode.py kills a trainer node under DDP.)"""
    one = train(tiny(work, "ddp1", "train.engine=ddp", "train.steps=2", "train.eval_every=2", "scale.num_workers=1"))
    a = one.last_metrics
    assert (a["num_workers"], a["accumulation"], a["global_batch"]) == (1, 2, 8)
    assert a["examples_seen"] == 2 * 8 and a["step"] == 2


@pytest.mark.cpu_adam
def test_zero3_offload_optimizer_and_params_trains_and_resumes(ray_local, work):
    """ZeRO-Infinity on CPU: ZeRO-3 with optimizer states and parameters offloaded, stepped by
    DeepSpeed's CPU Adam (JIT-built once into TORCH_EXTENSIONS_DIR); then a rerun resumes it."""
    over = ["train.engine=deepspeed", "train.zero_stage=3", "train.offload=optimizer+params", "train.eval_every=3"]
    first = train(tiny(work, "offload", *over, "train.steps=6"))
    m = first.last_metrics
    assert m["step"] == 6 and m["train_loss"] < 0.7 * m["first_train_loss"]
    assert (first.export_dir / "model.safetensors").is_file()
    again = train(tiny(work, "offload", *over, "train.steps=9"))
    assert again.last_metrics["resumed_from"] == 6 and again.last_metrics["step"] == 9


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (bf16 + NCCL path)")
def test_gpu_bf16_deepspeed_nccl(ray_local, work):
    out = train(tiny(work, "gpu", "train.engine=deepspeed", "train.zero_stage=2", "train.bf16=true",
                     "scale.use_gpu=true", "scale.num_workers=1", "train.steps=4", "train.eval_every=4"))
    assert out.last_metrics["train_loss"] < out.last_metrics["first_train_loss"]


@pytest.fixture(scope="module")
def lora_causal(ray_local, work, tmp_path_factory):
    """A causal student (Gemma 3's architecture at test size) with LoRA, multi-task, ZeRO-2 on 2 workers;
    then rerun to more steps (resume). On e-SNLI: a closed label space for choice scoring."""
    d = tmp_path_factory.mktemp("esnli")
    write_accepted("esnli", "valid", d / "rationales")
    over = tiny(work, "lora", "model.name=tiny-gemma3", "model.lora_r=4", "data.dataset=esnli",
                "data.train_split=valid", f"data.rationales={d / 'rationales'}", "data.max_input_length=96",
                "data.max_rationale_length=32", "train.engine=deepspeed", "train.zero_stage=2",
                "train.eval_every=2", "train.lr=1e-2", "model.output_vocab=task")
    first = train([*over, "train.steps=4"])
    again = train([*over, "train.steps=6"])
    return first, again


def test_lora_causal_student_trains_exports_merged_and_resumes_its_curve(lora_causal):
    import torch
    from transformers import AutoModelForCausalLM

    from sbs.student.curves import read_metrics

    first, again = lora_causal
    m = first.last_metrics
    assert m["step"] == 4 and m["train_loss"] < m["first_train_loss"]
    assert again.last_metrics["resumed_from"] == 4 and again.last_metrics["step"] == 6
    # the state carried over (a rerun of the same run name resumes): the original run's first loss
    assert again.last_metrics["first_train_loss"] == pytest.approx(m["first_train_loss"])
    export = again.export_dir
    # merged into plain weights: no adapter files, and plain transformers loads the whole model
    assert not (export / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(export)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert isinstance(model.model.embed_tokens.weight, torch.nn.Parameter)
    # the curve covers both attempts, one point per step, and validation at every eval
    hist = read_metrics(export / "train_metrics.jsonl")
    assert [h["step"] for h in hist if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert [h["step"] for h in hist if "val_accuracy" in h] == [2, 4, 6]
    assert all(h["label_loss"] > 0 and h["rationale_loss"] > 0 for h in hist if "loss" in h)
    png = (export / "train_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_task_vocabulary_travels_with_the_export_and_plain_generate_keeps_to_it(lora_causal):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sbs.datasets import get_dataset
    from sbs.export import ExportMeta
    from sbs.predict import Student
    from sbs.student.causal import prompt_ids

    export = lora_causal[1].export_dir
    meta = ExportMeta.read(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    vocab = set(meta.output_vocab)
    assert 0 < len(vocab) < model.config.vocab_size
    assert set(model.generation_config.suppress_tokens) == set(range(model.config.vocab_size)) - vocab
    ds = get_dataset("esnli")
    xs = [ds.student_text(e.fields) for e in ds.load("test", limit=3)]
    preds = Student.load(export).predict(xs)
    for x, p in zip(xs, preds):  # plain transformers, the export's own generation_config
        ids = torch.tensor([prompt_ids(tok, x, meta.causal_separator, meta.max_input_length)])  # truncated as trained
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=meta.max_label_length)[0, ids.shape[1]:]
        assert set(out.tolist()) <= vocab | {tok.pad_token_id}
        assert p.raw == tok.decode(out, skip_special_tokens=True).strip()


def test_sbs_eval_choice_decoding_ranks_the_label_space(lora_causal, tmp_path):
    export = lora_causal[1].export_dir
    out = tmp_path / "choices.json"
    assert sbs_main(["eval", str(export), "--split", "test", "--limit", "6", "--decoding", "choices",
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["decoding"] == "choices" and res["n"] == 6
    for p in res["predictions"]:
        assert set(p["scores"]) == {"entailment", "neutral", "contradiction"}
        assert p["pred"] == max(p["scores"], key=p["scores"].get)
        assert all(v < 0 for v in p["scores"].values())  # log-likelihoods of whole answers
    # an open-answer dataset has nothing to rank: a clear error naming the option
    assert sbs_main(["eval", str(export), "--dataset", "svamp", "--limit", "2", "--decoding", "choices"]) == 1
