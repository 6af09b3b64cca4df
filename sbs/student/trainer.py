"""The driver side of student training: rows -> Ray Dataset -> TorchTrainer -> best checkpoint -> export.

`train(cfg)` is what `sbs train` and `jobs/train_student.py` call. Ray Train owns workers,
failures and checkpoints: `FailureConfig(max_failures)` restarts a run whose worker died from
its latest checkpoint, and rerunning the same `run.name` under the same `run.storage_path`
resumes it (Ray Train V2). `CheckpointConfig` keeps the best `num_to_keep` by validation
accuracy (the latest is always kept too); the best one is exported as a self-contained
`save_pretrained` directory with `sbs_meta.json`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbs.export import ExportMeta
from sbs.student.config import ModelConfig, StudentTrainConfig
from sbs.student.curves import write_curves
from sbs.student.data import build_rows, to_ray_dataset
from sbs.student.loop import MODEL_DIR, STATE_FILE, train_loop_per_worker
from sbs.student.models import merge_adapter
from sbs.student.vocab import task_vocab, write_generation_vocab

log = logging.getLogger(__name__)
SCORE = "val_accuracy"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: a checkpoint that holds a LoRA adapter only


@dataclass
class TrainOutcome:
    export_dir: Path
    best_metrics: dict[str, Any]
    last_metrics: dict[str, Any]
    data_stats: dict[str, Any]
    run_path: str


def storage_path(cfg: StudentTrainConfig) -> str:
    """Ray wants an absolute local path or a URI."""
    p = cfg.run.storage_path
    return p if "://" in p else str(Path(p).resolve())


def batch_summary(cfg: StudentTrainConfig) -> str:
    t, s = cfg.train, cfg.scale
    return (f"global batch {t.global_batch} = micro batch {t.micro_batch} x {s.num_workers} worker(s) x "
            f"{cfg.accumulation} accumulation step(s)")


def build_trainer(cfg: StudentTrainConfig, train_rows: list[dict[str, Any]], valid_ids: list[str],
                  valid_split: str, output_vocab: list[int] | None = None) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s, r = cfg.scale, cfg.run
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {}), **s.resources}
    loop_config = {"cfg": cfg.model_dump(mode="json"), "valid_ids": valid_ids, "valid_split": valid_split,
                   "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"), "output_vocab": output_vocab}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                     accelerator_type=s.accelerator_type),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=r.name, storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep, checkpoint_score_attribute=SCORE,
                                               checkpoint_score_order="max"),
            # workers inherit the thread limits; Ray would otherwise leave OMP unset in some setups
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(s.cpus_per_worker),
                                             "MKL_NUM_THREADS": str(s.cpus_per_worker),
                                             # print() once: Train's print patch also tees it to stdout
                                             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
        datasets={"train": to_ray_dataset(train_rows)},
    )


def pick_best(result: Any) -> tuple[Any, dict[str, Any]]:
    """The kept checkpoint with the highest validation accuracy; the later one on a tie."""
    pairs = list(result.best_checkpoints or [])
    if not pairs:
        raise RuntimeError(f"training produced no checkpoint (run at {result.path})")
    return max(pairs, key=lambda cm: (cm[1].get(SCORE, float("-inf")), cm[1].get("step", 0)))


def export_checkpoint(ckpt: Any, metrics: dict[str, Any], out_dir: Path, extra: dict[str, Any],
                      model_cfg: ModelConfig | None = None, history: list[dict[str, Any]] | None = None) -> Path:
    """Copy a checkpoint's `model/` (weights, tokenizer, meta) to `out_dir` and record its metrics.

    A LoRA checkpoint holds only its adapter: the export merges it into the base model (rebuilt
    from `model_cfg`), so plain transformers loads the result like any other model."""
    with ckpt.as_directory() as d:
        src = Path(d) / MODEL_DIR
        if not src.is_dir():
            raise RuntimeError(f"{d}: checkpoint has no {MODEL_DIR}/ folder to export")
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if (src / ADAPTER_CONFIG).is_file():
            if model_cfg is None:
                raise RuntimeError(f"{src}: a LoRA adapter; exporting it needs the model spec to merge into")
            merge_adapter(src, model_cfg, tmp)
            for f in src.iterdir():  # tokenizer + sbs_meta.json, not the adapter
                if f.is_file() and not f.name.startswith("adapter_"):
                    shutil.copy2(f, tmp / f.name)
        else:
            shutil.copytree(src, tmp)
        state = json.loads((Path(d) / STATE_FILE).read_text(encoding="utf-8"))
    meta = ExportMeta.read(tmp)
    if meta.output_vocab is not None:
        write_generation_vocab(tmp, meta.output_vocab)
    meta.metrics = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None},
                    "checkpoint_step": state.get("step"), **extra}
    meta.write(tmp)
    curve = history if history is not None else state.get("history", [])
    write_curves(curve, tmp, f"{meta.run_name}: {meta.method} {meta.base_model} on {meta.dataset}")
    shutil.rmtree(out_dir, ignore_errors=True)  # replace the previous export only once the new one is whole
    tmp.rename(out_dir)
    return out_dir


def latest_history(result: Any) -> list[dict[str, Any]] | None:
    """The whole run's curve: the latest checkpoint's, which may come after the best one."""
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as d:
        p = Path(d) / STATE_FILE
        return json.loads(p.read_text(encoding="utf-8")).get("history") if p.is_file() else None


def train(cfg: StudentTrainConfig) -> TrainOutcome:
    """Train and export; Ray is joined (or started) only once the data is known to be good."""
    from sbs.ray_local import connect

    data = build_rows(cfg)  # config and data errors surface here, before any Ray start-up cost
    log.info("%s", batch_summary(cfg))
    print(f"[sbs train] {cfg.method.name} on {cfg.data.dataset}: {data.stats['train_rows']} training rows "
          f"({data.stats['dropped_no_rationale']} dropped without an accepted rationale), "
          f"{data.stats['valid']} validation ({data.stats['valid_split']}); {batch_summary(cfg)}", flush=True)
    vocab = task_vocab(cfg, data.train) if cfg.model.output_vocab == "task" else None
    if vocab is not None:
        print(f"[sbs train] output vocabulary: {len(vocab)} tokens (model.output_vocab=task)", flush=True)
    # + one CPU for the Ray Data split coordinator (sizes a local Ray only; a cluster has its own)
    connect(num_cpus=max(cfg.scale.num_workers * cfg.scale.cpus_per_worker + 1, 2))
    trainer = build_trainer(cfg, data.train, data.valid_ids, data.valid_split, vocab)
    result = trainer.fit()
    ckpt, best = pick_best(result)
    extra = {"data": data.stats, "global_batch": cfg.train.global_batch, "accumulation": cfg.accumulation}
    out = export_checkpoint(ckpt, best, Path(cfg.export_dir()), extra, cfg.model, latest_history(result))
    print(f"[sbs train] exported step {best.get('step')} (val_accuracy {best.get(SCORE)}) to {out}", flush=True)
    return TrainOutcome(out, best, dict(result.metrics or {}), data.stats, str(result.path))
