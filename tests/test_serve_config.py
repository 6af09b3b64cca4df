"""Serving config without a running Serve: ServeConfig checks, every shipped serve YAML (sbs's and
Ray Serve's own schema), the app builder's errors, and the bf16-on-GPU student replica."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sbs.config import ConfigError, load_config
from sbs.serve.app import build_app, config_from_args, load_student
from sbs.serve.config import ServeConfig
from sbs.serve.sample_models import make_export

ROOT = Path(__file__).resolve().parents[1]
SERVE_YAMLS = sorted((ROOT / "configs" / "serve").glob("*.yaml"))
STUDENT = {"dataset": "esnli", "export_dir": "x"}


def _is_ray_serve_file(data: dict) -> bool:
    return "applications" in data


def _load(name: str) -> ServeConfig:
    return load_config(ServeConfig, ROOT / "configs" / "serve" / name)


def test_students_yaml_serves_what_the_multitask_configs_export():
    """configs/serve/students.yaml: one student per dataset, each export_dir where `sbs train --config
    configs/student/<dataset>_multitask.yaml` exports (its comment says so); CPU, loopback, float32."""
    from sbs.student.config import load_train_config

    cfg = _load("students.yaml")
    assert [s.dataset for s in cfg.students] == ["esnli", "anli1", "cqa", "svamp"]
    for s in cfg.students:
        train = load_train_config(str(ROOT / "configs" / "student" / f"{s.dataset}_multitask.yaml"))
        assert s.export_dir == train.export_dir(), f"{s.dataset}: serves {s.export_dir}, training exports elsewhere"
    assert (cfg.host, cfg.port, cfg.device, cfg.torch_dtype_name(), cfg.num_replicas) == \
        ("127.0.0.1", 8000, "cpu", "float32", 1)
    assert cfg.ray_actor_options.num_cpus == 1 and cfg.ongoing_requests() == 32


def test_gpu_yaml_is_students_yaml_on_autoscaled_bf16_gpu_replicas():
    cpu, gpu = _load("students.yaml"), _load("gpu.yaml")
    assert gpu.students == cpu.students  # include: students.yaml
    assert (gpu.device, gpu.torch_dtype_name(), gpu.ray_actor_options.num_gpus) == ("cuda", "bfloat16", 0.5)
    assert gpu.num_replicas is None and gpu.autoscaling_config.model_dump() == \
        {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32, "upscale_delay_s": 30.0,
         "downscale_delay_s": 600.0, "look_back_period_s": 30.0}
    from ray.serve.config import AutoscalingConfig  # every field is one of Serve's own, same meaning

    assert AutoscalingConfig(**gpu.autoscaling_config.model_dump()).look_back_period_s == 30.0
    assert gpu.batching.max_batch_size == 64 and gpu.ongoing_requests() == 128


def test_sample_yaml_serves_what_its_first_command_writes(tmp_path: Path):
    """`python -m sbs.serve.sample_models runs/serve_sample` (sample.yaml's first line) writes the
    students sample.yaml names, and the builder accepts them: each export is for its dataset."""
    from sbs.serve.app import check_students
    from sbs.serve.sample_models import main as sample_main

    assert sample_main([str(tmp_path / "runs" / "serve_sample")]) == 0
    cfg = _load("sample.yaml").resolve_paths(tmp_path)  # relative paths: from where the command ran
    assert [s.dataset for s in cfg.students] == ["esnli", "svamp"]
    check_students(cfg)
    from sbs.export import ExportMeta

    assert [ExportMeta.read(s.export_dir).method for s in cfg.students] == ["multitask", "standard"]
    assert cfg.ray_actor_options.num_cpus == 0.5  # two students fit a 2-core laptop


@pytest.mark.parametrize("name,sbs_file", [("serve_sample.yaml", "sample.yaml"), ("serve_students.yaml", "students.yaml")])
def test_ray_serve_files_deploy_the_sbs_config_they_name(name: str, sbs_file: str, monkeypatch):
    data = yaml.safe_load((ROOT / "configs" / "serve" / name).read_text())
    (app,) = data["applications"]
    monkeypatch.chdir(ROOT)
    assert app["args"]["config"] == f"configs/serve/{sbs_file}"
    assert config_from_args(app["args"]) == _load(sbs_file)  # nothing added on the way


@pytest.mark.parametrize("path", SERVE_YAMLS, ids=[p.name for p in SERVE_YAMLS])
def test_every_shipped_serve_yaml_validates(path: Path, monkeypatch):
    text = path.read_text()
    assert text.startswith("#") and "serve" in text.splitlines()[1], f"{path.name}: starts with a how-to-run comment"
    data = yaml.safe_load(text)
    if not _is_ray_serve_file(data):
        cfg = load_config(ServeConfig, path)
        assert cfg.host == "127.0.0.1", f"{path.name}: binds loopback by default"
        return
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(data)  # Ray Serve's own check, as `serve run` does
    assert schema.http_options.host == "127.0.0.1", f"{path.name}: Serve's default host is 0.0.0.0"
    monkeypatch.chdir(ROOT)  # `serve run` is run from the repo root; the args' paths are relative to it
    for app in schema.applications:
        assert app.import_path == "sbs.serve.app:build_app"
        cfg = config_from_args(app.args)  # the builder's own validation of its args
        assert (cfg.host, cfg.port) == (schema.http_options.host, schema.http_options.port), \
            f"{path.name}: http_options and the sbs config disagree on host/port"


@pytest.mark.parametrize("override,words", [
    ("batching.max_batch_size=0", ["batching.max_batch_size", "greater than or equal to 1"]),
    ("batching.batch_wait_timeout_s=-1", ["batching.batch_wait_timeout_s"]),
    ("max_items_per_request=0", ["max_items_per_request"]),
    ("port=70000", ["port", "less than or equal to 65535"]),
    ("host=my machine", ["host", "not an IP address"]),
    ("device=tpu", ["device", "'cpu' or 'cuda'"]),
    ("device=cuda", ["num_gpus > 0"]),
    ("ray_actor_options.num_gpus=1", ["num_gpus", "device: cpu"]),
    ("dtype=bfloat16", ["dtype", "cuda"]),
    ("autoscaling_config.min_replicas=3", ["min_replicas (3) must be <= max_replicas (2)"]),
    ("route_prefix=api", ["route_prefix", "start with '/'"]),
    ("batchng.max_batch_size=4", ["batchng", "unknown field"]),
])
def test_config_errors_name_the_field(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, None, ["students=[{dataset: esnli, export_dir: x}]", override])
    for w in words:
        assert w in str(e.value), str(e.value)


def test_config_defaults_and_derived_values():
    cfg = ServeConfig(students=[STUDENT])
    assert cfg.host == "127.0.0.1" and not cfg.is_exposed
    assert cfg.ongoing_requests() == 32  # 2 x max_batch_size 16: Serve's default 5 would cap the batch
    assert cfg.torch_dtype_name() == "float32"
    gpu = ServeConfig(students=[STUDENT], device="cuda", ray_actor_options={"num_gpus": 1})
    assert gpu.torch_dtype_name() == "bfloat16"
    assert ServeConfig(students=[STUDENT], host="0.0.0.0").is_exposed
    with pytest.raises(ValueError, match="appears twice"):
        ServeConfig(students=[STUDENT, {"dataset": "esnli", "export_dir": "y"}])


def test_cli_binds_loopback_unless_exposed():
    import argparse

    from sbs.serve.cli import add_arguments, base_url, config_from_cli

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_cli(p.parse_args(["--config", str(ROOT / "configs/serve/sample.yaml"), "port=8123"]))
    assert (cfg.host, cfg.port, cfg.is_exposed) == ("127.0.0.1", 8123, False)
    cfg = config_from_cli(p.parse_args(["--config", str(ROOT / "configs/serve/sample.yaml"), "--expose"]))
    assert cfg.host == "0.0.0.0" and cfg.is_exposed
    assert base_url(cfg) == "http://127.0.0.1:8000"  # the CLI still talks to itself over loopback


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    # max_label_length 16: every e-SNLI label (and its EOS) fits, so scores are over whole labels
    return make_export(tmp_path_factory.mktemp("export") / "esnli", "esnli", "multitask", max_label_length=16)


def test_builder_checks_students_before_deploying(export: Path, tmp_path: Path):
    app = build_app({"students": [{"dataset": "esnli", "export_dir": str(export)}]})
    assert type(app).__name__ == "Application"
    with pytest.raises(ConfigError, match=r"students\[0\] \(svamp\).*dataset 'esnli', not 'svamp'"):
        build_app({"students": [{"dataset": "svamp", "export_dir": str(export)}]})
    with pytest.raises(ConfigError, match=r"students\[0\].*not an sbs export"):
        build_app({"students": [{"dataset": "esnli", "export_dir": str(tmp_path)}]})
    with pytest.raises(ConfigError, match=r"batching.max_batch_size"):
        build_app({"students": [{"dataset": "esnli", "export_dir": str(export)}],
                   "overrides": ["batching.max_batch_size=0"]})


def test_replica_model_on_cpu_is_float32(export: Path):
    import torch

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    student = load_student(str(export), "cpu", ServeConfig(students=[STUDENT]).torch_dtype_name(), 1)
    assert student.model.dtype == torch.float32 and torch.get_num_threads() == 1
    x = "Premise: a\nHypothesis: b"
    preds = student.predict([x] * 3, explain=True, batch_size=3)
    # the replica answers what plain transformers answers from the export's files (greedy, float32)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(export).eval(), AutoTokenizer.from_pretrained(export)
    m = student.meta
    want = []
    for prompt, n in ((m.label_input(x), m.max_label_length), (m.explain_input(x), m.max_rationale_length)):
        with torch.no_grad():
            out = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=n, do_sample=False)
        want.append(tok.decode(out[0], skip_special_tokens=True).strip())
    assert [(p.label, p.rationale) for p in preds] == [tuple(want)] * 3
    # an untrained student may stop at once (empty text): the label-space scores compare real numbers
    labels = m.label_space
    got = student.predict([x], candidates=[labels])[0]
    enc = tok([m.label_input(x)], return_tensors="pt")
    for c in labels:
        target = torch.tensor([tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logp = model(**enc, labels=target).logits.log_softmax(-1)[0].gather(-1, target[0, :, None]).sum()
        assert got.scores[c] == pytest.approx(logp.item(), abs=1e-4), c
    assert got.label == max(labels, key=got.scores.get)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (bf16 replica)")
def test_replica_model_on_gpu_is_bf16(export: Path):
    import torch

    cfg = ServeConfig(students=[{"dataset": "esnli", "export_dir": str(export)}], device="cuda",
                      ray_actor_options={"num_gpus": 1})
    student = load_student(str(export), cfg.device, cfg.torch_dtype_name(), 1)
    assert student.model.dtype == torch.bfloat16 and student.model.device.type == "cuda"
    preds = student.predict(["Premise: a\nHypothesis: b"] * 4, explain=True, batch_size=4)
    assert len(preds) == 4 and all(isinstance(p.label, str) for p in preds)


def test_builder_args_merge_into_the_file_section_by_section(tmp_path: Path):
    """Inline builder args deep-merge over the YAML (one loader: sbs.config.load_config)."""
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"students": [STUDENT], "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}}))
    cfg = config_from_args({"config": str(f), "batching": {"max_batch_size": 4}, "overrides": ["port=8123"]})
    assert (cfg.batching.max_batch_size, cfg.batching.batch_wait_timeout_s, cfg.port) == (4, 0.5, 8123)


def test_ingress_renders_the_input_the_student_was_trained_on(tmp_path):
    """A CQA student reads over HTTP what its export's meta says it was trained on (data.choice_layout):
    the question alone, the choices first, or the choices after the question; an export written
    before choice_layout existed (`show_choices`) still loads and reads the same."""
    from sbs.export import ExportMeta
    from sbs.serve.app import InputGate
    from sbs.serve.config import StudentSpec

    rec = {"question": "Where is milk kept cold?", "choices": ["oven", "fridge"]}
    texts = {}
    for layout in ("after", "before", "none"):
        out = make_export(tmp_path / layout, "cqa", "standard", kind="tiny-t5")
        ExportMeta.read(out).model_copy(update={"choice_layout": layout}).write(out)
        texts[layout] = InputGate(StudentSpec(dataset="cqa", export_dir=str(out))).to_text("input", rec)
    assert texts["none"] == "Question: Where is milk kept cold?"
    assert texts["before"] == "Choices: oven, fridge\nQuestion: Where is milk kept cold?"
    assert "Answer Choices:" in texts["after"] and "(b) fridge" in texts["after"]
    meta = tmp_path / "none" / "sbs_meta.json"
    for show, layout in ((False, "none"), (True, "after")):
        d = json.loads(meta.read_text())
        d.pop("choice_layout", None)
        meta.write_text(json.dumps({**d, "show_choices": show}))
        assert ExportMeta.read(meta.parent).choice_layout == layout
