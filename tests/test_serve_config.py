"""Serving config without a running Serve: ServeConfig checks, every shipped serve YAML (sbs's and
Ray Serve's own schema), the app builder's errors, and the bf16-on-GPU student replica."""
from __future__ import annotations

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


def test_configs_exist():
    kinds = [_is_ray_serve_file(yaml.safe_load(p.read_text())) for p in SERVE_YAMLS]
    assert any(kinds) and not all(kinds), SERVE_YAMLS


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
        load_config(ServeConfig, None, [f"students=[{{dataset: esnli, export_dir: x}}]", override])
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
    return make_export(tmp_path_factory.mktemp("export") / "esnli", "esnli", "multitask")


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

    student = load_student(str(export), "cpu", ServeConfig(students=[STUDENT]).torch_dtype_name(), 1)
    assert student.model.dtype == torch.float32 and torch.get_num_threads() == 1
    preds = student.predict(["Premise: a\nHypothesis: b"] * 3, explain=True, batch_size=3)
    assert len(preds) == 3 and all(isinstance(p.rationale, str) for p in preds)


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
