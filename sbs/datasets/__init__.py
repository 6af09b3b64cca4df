"""Dataset registry: a plain dict. Adding a dataset = adding one module and one line here,
or a YAML config for a plain JSONL/Parquet dataset (`sbs.datasets.generic`)."""
from __future__ import annotations

from pathlib import Path

from sbs.datasets.anli1 import Anli1
from sbs.datasets.base import (Example, InputError, Parsed, ParseResult, Rejected, SplitUnavailable,
                               TaskDataset)
from sbs.datasets.cqa import Cqa
from sbs.datasets.esnli import Esnli
from sbs.datasets.generic import GenericDataset, GenericDatasetConfig
from sbs.datasets.svamp import Svamp

DATASETS: dict[str, TaskDataset] = {d.name: d for d in (Svamp(), Cqa(), Esnli(), Anli1())}


def get_dataset(name: str) -> TaskDataset:
    """A built-in dataset by name, or a generic dataset from a YAML config path."""
    if name in DATASETS:
        return DATASETS[name]
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return GenericDataset.from_yaml(name)
    raise KeyError(f"dataset: unknown {name!r}; choose one of {sorted(DATASETS)} or a generic dataset YAML file")


__all__ = ["DATASETS", "Example", "GenericDataset", "GenericDatasetConfig", "InputError", "Parsed", "ParseResult",
           "Rejected", "SplitUnavailable", "TaskDataset", "get_dataset"]
