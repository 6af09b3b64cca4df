"""One typed config layer: pydantic models, loaded from YAML with `a.b=c` CLI overrides.

Every stage's config is a `Config` subclass. Unknown keys are errors (a typo must not silently
fall back to a default), and every error names the field path, e.g. `train.lr: Input should be
greater than 0`. YAML files may `include:` a base file (relative path) that they override.

Paths: a path inside a config is relative to the working directory of the command that loads it
(as on the command line), with two exceptions that belong to a file, not to a run: `include:`
and a dataset YAML's `files:` (and `prompt_file:`) are relative to the YAML that names them, so a
dataset folder moves as a unit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A config problem, already phrased for the user (names the file and/or field)."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _custom_only(resources: dict[str, float]) -> dict[str, float]:
    bad = [k for k, v in resources.items() if k in ("CPU", "GPU") or v <= 0]
    if bad:
        raise ValueError(f"{bad}: custom resources only, each > 0 (CPUs and GPUs have their own fields)")
    return resources


# Custom Ray resources a stage asks for ({trainer: 1}): work lands only on nodes that advertise them.
CustomResources = Annotated[dict[str, float], AfterValidator(_custom_only)]


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, resolving `include: base.yaml` (relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(str(p) for p in _seen + (path,))})")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    merged: dict = {}
    for i in incs:
        merged = _deep_merge(merged, read_yaml(path.parent / i, _seen + (path,)))
    return _deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = dict(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
            node[p] = dict(nxt)
            node = node[p]
        node[path[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        # a cross-field check names its fields in its own message; a field's own check gets its path
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def build(cls: type[T], data: dict, source: str = "config") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                inline: dict | None = None) -> T:
    """Load `cls` from an optional YAML file, then `inline` fields (deep-merged over it), then
    `key=value` overrides; errors name the file and the field."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(_deep_merge(data, inline or {}), overrides)
    return build(cls, data, source=str(path) if path else "config")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
