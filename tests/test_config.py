from pathlib import Path

import pytest
from pydantic import Field

from sbs.config import Config, ConfigError, load_config


class Inner(Config):
    lr: float = Field(1e-3, gt=0)
    steps: int = Field(10, ge=1)


class Outer(Config):
    name: str = "x"
    train: Inner = Field(default_factory=Inner)


def test_defaults_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\ntrain:\n  lr: 0.5\n")
    cfg = load_config(Outer, p, ["train.steps=7"])
    assert (cfg.name, cfg.train.lr, cfg.train.steps) == ("a", 0.5, 7)


def test_error_names_the_field_and_file(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert "train.lr" in str(e.value) and str(p) in str(e.value) and "greater than 0" in str(e.value)


def test_unknown_field_is_an_error():
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown field"):
        load_config(Outer, None, ["train.stpes=3"])


def test_include_reuses_a_base_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain:\n  lr: 0.1\n  steps: 3\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\ntrain:\n  steps: 9\n")
    cfg = load_config(Outer, tmp_path / "child.yaml")
    assert (cfg.name, cfg.train.lr, cfg.train.steps) == ("base", 0.1, 9)


def test_bad_yaml_and_missing_file(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["train.lr"])


@pytest.mark.parametrize("cls,over,field", [
    ("student", ["method.name=standard", "scale.resources={CPU: 1}"], "scale.resources"),
    ("teacher", ["resources={GPU: 1}"], "resources"),
    ("serve", ["students=[{dataset: esnli, export_dir: x}]", "ray_actor_options.resources={serve: 0}"],
     "ray_actor_options.resources"),
    ("serve", ["students=[{dataset: esnli, export_dir: x}]", "ingress.resources={CPU: 2}"], "ingress.resources"),
])
def test_placement_resources_are_custom_and_positive(cls, over, field):
    """Every stage's placement field takes custom Ray resources only; the error names the field."""
    from sbs.serve.config import ServeConfig
    from sbs.student.config import StudentTrainConfig
    from sbs.teacher.config import TeacherConfig

    klass = {"student": StudentTrainConfig, "teacher": TeacherConfig, "serve": ServeConfig}[cls]
    with pytest.raises(ConfigError, match=rf"config: {field}: .*custom resources only"):
        load_config(klass, None, over)
    ok = [o for o in over if "resources" not in o] + [f"{field}={{trainer: 1}}"]
    node = load_config(klass, None, ok)
    for part in field.split("."):
        node = getattr(node, part)
    assert node == {"trainer": 1.0}  # a custom resource is accepted as given
