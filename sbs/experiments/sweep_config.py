"""The sweep's typed config: which cells to run and how each cell's student is trained."""
from __future__ import annotations

from pydantic import Field, model_validator

from sbs.config import Config
from sbs.export import Method


class SweepDataset(Config):
    name: str = Field(description="dataset name (svamp, cqa, esnli, anli1) or generic dataset YAML")
    train_split: str = Field("train", description="'train' for svamp/cqa; 'valid' for esnli/anli1 offline")
    valid_split: str | None = Field(None, description="the dataset's own validation split; empty: seeded 10% of train")
    test_split: str = Field("test", description="split every cell is finally scored on (never used for selection)")
    rationales: str | None = Field(None, description="teacher output dir (<dir>/accepted/*.parquet); required "
                                   "unless the sweep has only 'standard'")
    test_limit: int | None = Field(None, ge=1, description="score on the first N test examples only")
    overrides: list[str] = Field(default_factory=list, description="student config overrides for this dataset "
                                 "(e.g. data.max_input_length=96)")


class SweepConfig(Config):
    name: str = Field(description="sweep name (used in outputs)", pattern=r"^[A-Za-z0-9_.-]+$")
    out: str = Field(description="output dir: cells/<cell>/result.json, results.csv/json, plots/")
    student_config: str | None = Field(None, description="base student YAML every cell starts from")
    overrides: list[str] = Field(default_factory=list, description="student config overrides for every cell")
    datasets: list[SweepDataset] = Field(min_length=1)
    methods: list[Method] = Field(default_factory=lambda: ["standard", "distill", "single_task", "multitask"],
                                  min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    parallel_cells: int = Field(1, ge=1, description="cells trained at once (each is its own Ray Train run; "
                                "Ray schedules them as their CPUs allow)")
    baseline: str | None = Field(None, description="another sweep's out dir: the report also pairs each of this "
                                 "sweep's dataset/method/fraction with that sweep's, over the seeds both ran (a "
                                 "setting changed between two sweeps)")
    eval_batch: int = Field(32, ge=1, description="generation batch for the test evaluation")
    keep_artifacts: bool = Field(False, description="keep each cell's exported model and Ray Train checkpoints "
                                 "(hundreds of MB per cell for MiniLM); the result row is always kept")

    @model_validator(mode="after")
    def _check(self) -> "SweepConfig":
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ValueError(f"fractions: {f} is not in (0, 1]")
        if len(set(self.fractions)) != len(self.fractions) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("fractions/seeds: duplicates")
        needs = [m for m in self.methods if m != "standard"]
        for i, d in enumerate(self.datasets):
            if needs and not d.rationales:
                raise ValueError(f"datasets.{i}.rationales: methods {needs} need a teacher output dir")
            if d.test_split in (d.train_split, d.valid_split):
                raise ValueError(f"datasets.{i}.test_split: must differ from the train and valid splits")
        return self
