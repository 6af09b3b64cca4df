"""The student stage's typed config: model, data, method, optimisation, scale, run.

Loaded by `sbs train --config configs/student/<ds>_<method>.yaml key=value ...`. Every field has
help text and a range; cross-field rules (the global batch must split evenly over workers and
micro batches, `test` is never a training or validation split) raise a `ConfigError` naming
the fields involved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sbs.config import Config, ConfigError, CustomResources, load_config
from sbs.datasets.base import ChoiceLayout
from sbs.export import Method, Prefixes

ModelKindOpt = Literal["auto", "seq2seq", "encoder_decoder", "causal"]
LabelSource = Literal["gold", "teacher"]
# Which label each method trains on when `method.label_source` is left empty. Standard
# finetuning uses human labels and distillation teacher labels by definition; single_task
# keeps the teacher's label so the target "rationale. So the answer is label" stays coherent.
DEFAULT_LABEL_SOURCE: dict[str, LabelSource] = {
    "standard": "gold", "distill": "teacher", "single_task": "teacher", "multitask": "gold"}


class ModelConfig(Config):
    name: str = Field("tiny-t5", description="'tiny-t5' / 'tiny-gpt2' / 'tiny-gemma3' (random, built from a config, "
                      "for tests), 'minilm' (packaged all-MiniLM-L6-v2 encoder-decoder), 'gemma3-270m' (packaged "
                      "Gemma 3 270M base, causal: the best CPU student), or a Hugging Face name or local path")
    kind: ModelKindOpt = Field("auto", description="auto: from the model config (encoder-decoder -> seq2seq, "
                               "else causal); encoder_decoder builds EncoderDecoderModel from a pretrained encoder")
    init_seed: int = Field(0, description="seed for randomly initialised weights (tiny models, cross-attention)")
    lora_r: int = Field(0, ge=0, le=1024, description="LoRA rank through peft (0: full finetuning); the export "
                        "merges the adapter, so plain transformers loads it")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = lora_alpha / lora_r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_layers: int = Field(0, ge=0, description="LoRA on the top N transformer layers only (0: every "
                             "layer); the frozen layers below run forward only, so backward stops at the "
                             "lowest adapted layer (causal students)")
    lora_targets: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1,
                                    description="module names LoRA adapts; 'all-linear': every linear layer but "
                                    "the LM head")
    output_vocab: Literal["full", "task"] = Field("full", description="causal students: 'task' makes the softmax "
                                                  "run over the tokens the task can produce (every token of the "
                                                  "training rows and of the candidate answers: "
                                                  "sbs.student.vocab), exactly in training, generation and "
                                                  "choice scoring; 'full': the whole vocabulary")
    fused_kernels: bool = Field(True, description="causal training steps run the Gemma 3 family's RMSNorms and "
                                "MLP activation as fused kernels compiled by torch.compile, and LoRA layers as "
                                "one function each (exact up to float rounding: sbs.student.fused); false: the "
                                "modules' own eager forward")


class DataConfig(Config):
    dataset: str = Field("svamp", description="dataset name (svamp, cqa, esnli, anli1) or generic dataset YAML")
    train_split: str = Field("train", description="split to train on; esnli/anli1 ship 'valid' offline, not 'train'")
    source: Literal["shipped", "hub"] = Field("shipped", description="shipped: the splits inside the package "
                                              "(offline); hub: the full dataset from the Hugging Face hub, "
                                              "e.g. e-SNLI's 550k train (the teacher run must use the same source)")
    hub_data_files: dict[str, str] = Field(default_factory=dict, description="source=hub: split -> a local "
                                           "JSON/Parquet file in the hub's format (a mirror) instead of downloading")
    valid_split: str | None = Field(None, description="the dataset's own validation split; empty: a seeded "
                                    "valid_fraction of train_split (never test)")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out when there is no valid split")
    valid_limit: int | None = Field(None, ge=1, description="evaluate on at most this many validation examples")
    rationales: str | None = Field(None, description="teacher output dir with accepted/*.parquet (needed by "
                                   "distill, single_task, multitask)")
    fraction: float = Field(1.0, gt=0, le=1, description="seeded share of the training examples used (paper: "
                            "0.125, 0.25, 0.5, 1.0); smaller fractions are subsets of larger ones")
    seed: int = Field(0, description="seed of the validation hold-out and the fraction subsample")
    max_input_length: int = Field(128, ge=8, le=8192, description="student input tokens (truncated)")
    max_label_length: int = Field(32, ge=2, le=1024, description="label target tokens")
    max_rationale_length: int = Field(128, ge=2, le=4096, description="rationale target tokens")
    choice_layout: ChoiceLayout = Field("after", description="datasets whose input lists answer choices (CQA): "
                                        "after the question (the paper's layout), before it (a pretrained causal "
                                        "student's prior then ranks them as with the question alone), or none "
                                        "(the question alone: --decoding choices only); saved with the model")


class MethodConfig(Config):
    name: Method = Field("multitask", description="standard | distill | single_task | multitask")
    rationale_weight: float = Field(1.0, ge=0, description="lambda in L = L_label + lambda * L_rationale (multitask)")
    label_source: LabelSource | None = Field(None, description="gold | teacher; empty: standard=gold, "
                                             "distill=teacher, single_task=teacher, multitask=gold")
    prefixes: Prefixes = Field(default_factory=Prefixes, description="task prefixes (multitask), saved with the model")

    def resolved_label_source(self) -> LabelSource:
        return self.label_source or DEFAULT_LABEL_SOURCE[self.name]


class TrainConfig(Config):
    steps: int = Field(100, ge=1, description="optimizer steps (each consumes one global batch)")
    global_batch: int = Field(16, ge=1, description="examples per optimizer step over all workers = "
                              "micro_batch x scale.num_workers x accumulation (derived)")
    micro_batch: int = Field(8, ge=1, description="examples per worker per forward pass")
    lr: float = Field(1e-4, gt=0, le=1, description="peak learning rate (AdamW); 5e-4 collapses the MiniLM "
                      "encoder-decoder to one output (docs/results.md)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps, then lr_schedule")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: constant at lr, or decayed to 0 at train.steps (linear or cosine)")
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clip (0: off)")
    engine: Literal["deepspeed", "ddp"] = Field("deepspeed", description="deepspeed (ZeRO) or plain torch DDP")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage 0-3")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU; DeepSpeed bf16 section / autocast for DDP)")
    offload: Literal["none", "optimizer", "optimizer+params"] = Field(
        "none", description="DeepSpeed ZeRO-Offload to host memory: optimizer states (ZeRO stage >= 1; "
        "DeepSpeed's CPU Adam), or also the parameters (ZeRO-Infinity, stage 3); docs/capacity.md says when")
    eval_every: int = Field(50, ge=1, description="evaluate, checkpoint and report every N steps (and at the end)")
    eval_batch: int = Field(32, ge=1, description="generation batch for validation")
    select_by: Literal["generate", "choices"] = Field("generate", description="validation accuracy that picks "
                                                      "the exported checkpoint: free generation (the paper's "
                                                      "metric) or choice scoring (closed answer sets)")
    log_every: int = Field(10, ge=1, description="print the training loss every N steps (rank 0)")
    seed: int = Field(0, description="seed of data order and dropout")


class ScaleConfig(Config):
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs per worker; also its torch thread count")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL backend)")
    resources: CustomResources = Field(default_factory=dict, description="custom Ray resources each worker "
                                        "also needs, e.g. {trainer: 1}: the workers land only on nodes that "
                                        "advertise them (cluster/*.yaml node types; sbs local-cluster roles)")
    accelerator_type: str | None = Field(None, min_length=1, description="GPU type every worker must run on "
                                         "(Ray's accelerator_type, e.g. A100, H100); needs use_gpu")

    @model_validator(mode="after")
    def _accelerator_needs_gpu(self) -> "ScaleConfig":
        if self.accelerator_type and not self.use_gpu:
            raise ValueError(f"scale.accelerator_type={self.accelerator_type} needs scale.use_gpu=true (or drop it)")
        return self


class RunConfigSection(Config):
    name: str = Field("student", min_length=1, description="run name; rerunning the same name resumes it")
    storage_path: str = Field("runs/student", description="Ray Train storage (local dir or URI)")
    max_failures: int = Field(2, ge=-1, description="worker failures retried from the last checkpoint (-1: forever)")
    num_to_keep: int = Field(2, ge=1, description="best checkpoints kept (by validation accuracy); the latest "
                             "is always kept for resume")
    export_dir: str | None = Field(None, description="where the best model is exported; empty: "
                                   "<storage_path>/<name>/export")


class StudentTrainConfig(Config):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    run: RunConfigSection = Field(default_factory=RunConfigSection)

    @model_validator(mode="after")
    def _cross_field(self) -> "StudentTrainConfig":
        per_step = self.train.micro_batch * self.scale.num_workers
        if self.train.global_batch % per_step:
            raise ValueError(
                f"train.global_batch ({self.train.global_batch}) must be a multiple of train.micro_batch "
                f"({self.train.micro_batch}) x scale.num_workers ({self.scale.num_workers}) = {per_step}")
        for f in ("train_split", "valid_split"):
            if getattr(self.data, f) == "test":
                raise ValueError(f"data.{f}: 'test' is for the final report only, never for training or selection")
        if self.data.valid_split is not None and self.data.valid_split == self.data.train_split:
            raise ValueError("data.valid_split: must differ from data.train_split")
        t = self.train
        if t.offload != "none" and (t.engine != "deepspeed" or t.zero_stage < 1):
            raise ValueError(f"train.offload={t.offload} needs train.engine=deepspeed and train.zero_stage >= 1")
        if t.offload == "optimizer+params" and t.zero_stage != 3:
            raise ValueError("train.offload=optimizer+params (ZeRO-Infinity) needs train.zero_stage=3")
        if self.method.name != "standard" and not self.data.rationales:
            raise ValueError(f"data.rationales: method {self.method.name!r} needs a teacher output dir "
                             "(<dir>/accepted/*.parquet); only 'standard' trains without one")
        return self

    @property
    def accumulation(self) -> int:
        return self.train.global_batch // (self.train.micro_batch * self.scale.num_workers)

    def export_dir(self) -> str:
        return self.run.export_dir or str(Path(self.run.storage_path) / self.run.name / "export")


def load_train_config(path: str | None, overrides: list[str] | None = None) -> StudentTrainConfig:
    return load_config(StudentTrainConfig, path, overrides)


__all__ = ["ConfigError", "StudentTrainConfig", "load_train_config", "DEFAULT_LABEL_SOURCE"]
