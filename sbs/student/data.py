"""Training rows for the student: the dataset's split joined with the teacher's accepted rationales.

One row per example: id, input (student text), label (gold or teacher, per method), rationale
(teacher's, "" for standard). The validation set is the dataset's own split or a seeded
hold-out of the training split (never test); a data fraction is a seeded subsample of what is
left, nested so 12.5% is inside 25% is inside 50%.
"""
from __future__ import annotations

import glob
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sbs.config import ConfigError
from sbs.datasets import Example, SplitUnavailable, TaskDataset, get_dataset
from sbs.student.config import StudentTrainConfig

log = logging.getLogger(__name__)

# The teacher stage's accepted table; only these columns are read.
ACCEPTED_COLUMNS = ("id", "label", "rationale")
NEEDS_RATIONALE = ("single_task", "multitask")


@dataclass
class StudentData:
    train: list[dict[str, Any]]
    valid_ids: list[str]
    valid_split: str
    stats: dict[str, Any] = field(default_factory=dict)


def load_dataset(cfg: StudentTrainConfig) -> TaskDataset:
    try:
        ds = get_dataset(cfg.data.dataset)
    except KeyError as e:
        raise ConfigError(f"data.dataset: {e.args[0]}") from None
    if cfg.data.choice_layout != "after" and not ds.lists_choices:
        raise ConfigError(f"data.choice_layout={cfg.data.choice_layout}: {ds.name}'s student input lists no "
                          "answer choices (only datasets with per-example choices, e.g. cqa)")
    if cfg.train.select_by == "choices" and ds.label_space is None and not ds.lists_choices:
        raise ConfigError(f"train.select_by=choices: {ds.name} has open answers (no label space or choices "
                          "to rank); use generate")
    return ds


def load_split(ds: TaskDataset, split: str, field_name: str, source: str = "shipped",
               hub_data_files: dict[str, str] | None = None) -> list[Example]:
    """A split as Examples; `source="hub"` reads the full dataset (ids as the teacher's hub run wrote them)."""
    try:
        if source != "hub":
            return ds.load(split)
        files = (hub_data_files or {}).get(split)
        try:
            return ds.load(split, source="hub", **({"data_files": files} if files else {}))
        except SplitUnavailable:
            raise  # a ValueError too, but it already says what is wrong
        except (OSError, ValueError) as e:  # no network, a missing mirror file, a malformed one
            raise ConfigError(f"{field_name}: cannot read {ds.name}/{split} from the hub: "
                              f"{str(e).splitlines()[0]}") from None
    except SplitUnavailable as e:
        raise ConfigError(f"{field_name}: {e}") from None


def accepted_files(rationale_dir: str) -> list[str]:
    """The teacher stage's `<dir>/accepted/*.parquet`; a ConfigError naming the field when there are none."""
    files = sorted(glob.glob(str(Path(rationale_dir) / "accepted" / "*.parquet")))
    if not files:
        raise ConfigError(f"data.rationales: no {Path(rationale_dir) / 'accepted'}/*.parquet "
                          "(run the teacher stage, `sbs rationales`, first)")
    return files


def read_accepted(rationale_dir: str) -> dict[str, dict[str, str]]:
    """id -> {label, rationale} from `<dir>/accepted/*.parquet` (the teacher stage's output)."""
    out: dict[str, dict[str, str]] = {}
    for f in accepted_files(rationale_dir):
        schema = pq.read_schema(f)
        missing = [c for c in ACCEPTED_COLUMNS if c not in schema.names]
        if missing:
            raise ConfigError(f"data.rationales: {f}: missing column(s) {missing}; have {schema.names}")
        for r in pq.read_table(f, columns=list(ACCEPTED_COLUMNS)).to_pylist():
            if r["id"] is None or not r["rationale"] or r["label"] is None:
                continue  # an accepted row without text is unusable, whatever the teacher said
            out[str(r["id"])] = {"label": str(r["label"]), "rationale": str(r["rationale"])}
    return out


def holdout(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, valid): a seeded `fraction` of examples held out, order-independent (sorted by id)."""
    ids = sorted(e.id for e in examples)
    rng = random.Random(f"valid-{seed}")
    rng.shuffle(ids)
    n_valid = max(1, round(len(ids) * fraction))
    valid = set(ids[:n_valid])
    return [e for e in examples if e.id not in valid], [e for e in examples if e.id in valid]


def subsample(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded share of examples; one permutation per seed, so smaller fractions nest in larger."""
    if fraction >= 1.0:
        return list(examples)
    ids = sorted(e.id for e in examples)
    random.Random(f"fraction-{seed}").shuffle(ids)
    keep = set(ids[:max(1, round(len(ids) * fraction))])
    return [e for e in examples if e.id in keep]


def build_rows(cfg: StudentTrainConfig) -> StudentData:
    """Everything the trainer needs from data, with counts of what was dropped and why."""
    d, method = cfg.data, cfg.method.name
    ds = load_dataset(cfg)
    examples = load_split(ds, d.train_split, "data.train_split", d.source, d.hub_data_files)
    if d.valid_split:
        valid = load_split(ds, d.valid_split, "data.valid_split", d.source, d.hub_data_files)
        valid_name = d.valid_split
    else:
        examples, valid = holdout(examples, d.valid_fraction, d.seed)
        valid_name = f"{d.train_split}[{d.valid_fraction:g} held out, seed {d.seed}]"
    if d.valid_limit:
        valid = valid[: d.valid_limit]
    picked = subsample(examples, d.fraction, d.seed)
    source = cfg.method.resolved_label_source()
    accepted = read_accepted(d.rationales) if (d.rationales and method != "standard") else {}
    needs_teacher = method in NEEDS_RATIONALE or source == "teacher"
    rows, dropped = [], 0
    for e in picked:
        t = accepted.get(e.id)
        if needs_teacher and t is None:
            dropped += 1
            continue
        rows.append({"id": e.id, "input": ds.student_text(e.fields, d.choice_layout), "label": t["label"] if source == "teacher" else e.label,
                     "rationale": t["rationale"] if t and method in NEEDS_RATIONALE else ""})
    if not rows:
        raise ConfigError(f"data: no training rows left for method {method!r} ({len(picked)} examples, "
                          f"{dropped} without an accepted rationale in {d.rationales})")
    stats = {"dataset": ds.name, "train_split": d.train_split, "valid_split": valid_name,
             "train_pool": len(examples), "fraction": d.fraction, "picked": len(picked), "train_rows": len(rows),
             "dropped_no_rationale": dropped, "valid": len(valid), "label_source": source}
    log.info("student data: %s", stats)
    if dropped:
        log.warning("dropped %d of %d training examples without an accepted teacher rationale", dropped, len(picked))
    return StudentData(rows, [e.id for e in valid], d.valid_split or d.train_split, stats)


def valid_examples(cfg: StudentTrainConfig, ids: list[str], split: str) -> list[Example]:
    """The validation Examples by id (workers re-load them: scoring may need the dataset's fields)."""
    by_id = {e.id: e for e in load_split(load_dataset(cfg), split, "data.valid_split", cfg.data.source,
                                         cfg.data.hub_data_files)}
    return [by_id[i] for i in ids]


def to_ray_dataset(rows: list[dict[str, Any]]) -> Any:
    """The training rows as a Ray Dataset (workers read their shard with get_dataset_shard)."""
    import ray.data

    return ray.data.from_arrow(pa.Table.from_pylist(rows))
