"""`train_loop_per_worker`: what each Ray Train worker runs. One readable file.

DeepSpeed or plain DDP is the `train.engine` parameter, branched in four small places (setup,
backward/step, save, load), not a class tree. Per optimizer step a worker runs `accumulation`
micro batches of `micro_batch` rows from its Ray Data shard, so every step sees exactly
`global_batch` examples whatever the worker count. Every `eval_every` steps (and at the end)
the workers score label-only predictions on their slice of the validation set, save a
checkpoint and `ray.train.report` it; a restarted worker resumes from `ray.train.get_checkpoint()`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from sbs.export import ExportMeta
from sbs.student.collate import Collator
from sbs.student.config import StudentTrainConfig, TrainConfig
from sbs.student.losses import compute_loss, to_device

STATE_FILE = "sbs_train_state.json"
DS_TAG = "deepspeed"  # DeepSpeed checkpoint tag (sub-folder) inside a Ray checkpoint
DDP_FILE = "ddp_state.pt"
MODEL_DIR = "model"  # save_pretrained weights + tokenizer + sbs_meta.json: what export copies


def make_meta(cfg: StudentTrainConfig, kind: str, output_vocab: list[int] | None = None) -> ExportMeta:
    """What the export records; `output_vocab`: the task vocabulary the driver found (sbs.student.vocab)."""
    from sbs.config import ConfigError
    from sbs.student.data import load_dataset

    if output_vocab is not None and kind != "causal":
        raise ConfigError(f"model.output_vocab=task: only for causal students ({cfg.model.name} is {kind})")
    ds = load_dataset(cfg)
    return ExportMeta(method=cfg.method.name, dataset=cfg.data.dataset, model_kind=kind,
                      label_space=list(ds.label_space) if ds.label_space else None,
                      input_fields=list(ds.input_fields), base_model=cfg.model.name,
                      prefixes=cfg.method.prefixes, max_input_length=cfg.data.max_input_length,
                      max_label_length=cfg.data.max_label_length,
                      max_rationale_length=cfg.data.max_rationale_length, choice_layout=cfg.data.choice_layout,
                      output_vocab=output_vocab, run_name=cfg.run.name)


def deepspeed_config(cfg: StudentTrainConfig) -> dict[str, Any]:
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    ds: dict[str, Any] = {"train_batch_size": t.global_batch, "train_micro_batch_size_per_gpu": t.micro_batch,
                          "gradient_accumulation_steps": cfg.accumulation, "gradient_clipping": t.grad_clip,
                          "zero_optimization": zero, "bf16": {"enabled": t.bf16},
                          "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if t.offload != "none":
        # Offloaded states are stepped on the host by DeepSpeed's CPU Adam, which DeepSpeed builds
        # from this section (a torch optimizer would be refused with offload).
        pin = cfg.scale.use_gpu  # pinned host memory needs CUDA
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
        if t.offload == "optimizer+params":
            zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": t.weight_decay}}
    return ds


def lr_factor(step: int, t: TrainConfig) -> float:
    """The learning rate at optimizer step `step` (0-based) as a fraction of train.lr: linear
    warm-up, then constant or decayed to 0 at train.steps (the schedule a resume continues)."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    done = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return 1.0 - done if t.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))


def _scheduler(opt: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))


def trainable(model: Any) -> list[torch.nn.Parameter]:
    """What the optimizer steps: everything, or the LoRA adapters alone (the base stays frozen)."""
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(cfg: StudentTrainConfig, model: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The torch AdamW + warm-up and schedule (`lr_factor`) every non-offload run steps (also used outside Ray by
    benchmarks/student_step.py and scripts/lr_probe.py, so they time and train the same step)."""
    opt = torch.optim.AdamW(trainable(model), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return opt, _scheduler(opt, cfg.train)


def setup_engine(cfg: StudentTrainConfig, model: Any, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """(net to call forward on, the plain HF module, optimizer, scheduler) for the configured engine."""
    t = cfg.train
    if t.engine == "deepspeed" and t.offload != "none":
        import deepspeed

        # DeepSpeed builds its CPU Adam from the config; the warm-up schedule wraps whatever it built.
        engine, opt, _, sched = deepspeed.initialize(
            model=model, model_parameters=trainable(model), config=deepspeed_config(cfg),
            lr_scheduler=lambda o: _scheduler(o, t))
        return engine, engine.module, opt, sched
    # Otherwise a torch optimizer on purpose: DeepSpeed's CPU Adam JIT-compiles for a minute or more on CPU.
    opt, sched = make_optimizer(cfg, model)
    if t.engine == "deepspeed":
        import deepspeed

        engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                     config=deepspeed_config(cfg))
        return engine, engine.module, opt, sched
    import ray.train.torch

    net = ray.train.torch.prepare_model(model)  # DDP when world > 1; moves to the worker's device
    return net, getattr(net, "module", net), opt, sched


def micro_batches(shard: Any, cfg: StudentTrainConfig, start_step: int) -> Iterator[dict[str, Any]]:
    """Endless micro batches from the worker's shard, reshuffled (seeded) each pass over it."""
    epoch = 0
    while True:
        n = 0
        for b in shard.iter_batches(batch_size=cfg.train.micro_batch, drop_last=True, batch_format="numpy",
                                    local_shuffle_buffer_size=max(64, cfg.train.micro_batch * 4),
                                    local_shuffle_seed=cfg.train.seed * 100_003 + start_step * 1_009 + epoch):
            n += 1
            yield b
        if n == 0:
            raise ValueError(f"train.micro_batch ({cfg.train.micro_batch}) exceeds this worker's share of the "
                             "training rows: lower it or use fewer workers")
        epoch += 1


def _all_mean(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def _all_sum(values: list[float], world: int) -> list[float]:
    return [v * world for v in _all_mean(values, world)] if world > 1 else values


def validate(module: Any, tok: Any, meta: ExportMeta, examples: list[Any], cfg: StudentTrainConfig,
             rank: int, world: int, device: torch.device) -> float:
    """Label-only accuracy on the validation set, each rank scoring a strided slice."""
    from sbs.datasets import get_dataset
    from sbs.predict import Student
    from sbs.student.evaluate import candidates_for

    mine = examples[rank::world]
    real = len(mine)
    zero3 = cfg.train.engine == "deepspeed" and cfg.train.zero_stage == 3 and world > 1
    if zero3:  # every rank must run the same generate calls and decode steps (parameters are sharded)
        mine = mine + [examples[0]] * (math.ceil(len(examples) / world) - real)
    student = Student(module, tok, meta, str(device), generate_kwargs={"synced_gpus": True} if zero3 else None)
    ds = get_dataset(cfg.data.dataset)
    cands = candidates_for(ds, mine) if cfg.train.select_by == "choices" else None
    preds = student.predict([ds.student_text(e.fields, meta.choice_layout) for e in mine],
                            batch_size=cfg.train.eval_batch, candidates=cands)
    correct = sum(ds.score(p.label, e) for p, e in zip(preds[:real], mine[:real]))
    module.train()
    c, n = _all_sum([float(correct), float(real)], world)
    return c / max(n, 1.0)


def save_checkpoint(d: Path, cfg: StudentTrainConfig, net: Any, module: Any, tok: Any, opt: Any, sched: Any,
                    meta: ExportMeta, state: dict[str, Any], rank: int) -> bool:
    """Write this rank's part of a checkpoint into `d`; True when the rank has something to report."""
    if cfg.train.engine == "deepspeed":
        # collective: each rank writes its optimizer shard; with LoRA the frozen base (rebuilt
        # from the model spec on resume) is left out, so a checkpoint is the adapter's size
        net.save_checkpoint(str(d), tag=DS_TAG, exclude_frozen_parameters=bool(cfg.model.lora_r))
    elif rank == 0:
        torch.save({"model": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                   d / DDP_FILE)
    if cfg.train.engine == "deepspeed" and cfg.train.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                module.save_pretrained(d / MODEL_DIR, safe_serialization=True)
    elif rank == 0:
        module.save_pretrained(d / MODEL_DIR, safe_serialization=True)
    if rank == 0:
        tok.save_pretrained(d / MODEL_DIR)
        meta.write(d / MODEL_DIR)
        (d / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return rank == 0 or cfg.train.engine == "deepspeed"


def load_checkpoint(ckpt: Any, cfg: StudentTrainConfig, net: Any, module: Any, opt: Any, sched: Any,
                    meta: ExportMeta) -> dict[str, Any]:
    with ckpt.as_directory() as d:
        d = Path(d)
        check_resumable(ExportMeta.read(d / MODEL_DIR), meta, d)
        if cfg.train.engine == "deepspeed":
            net.load_checkpoint(str(d), tag=DS_TAG, load_module_strict=not cfg.model.lora_r)
        else:
            st = torch.load(d / DDP_FILE, map_location="cpu", weights_only=False)
            module.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
        return json.loads((d / STATE_FILE).read_text(encoding="utf-8"))


def check_resumable(saved: ExportMeta, meta: ExportMeta, where: Path) -> None:
    """A checkpoint continues only the run it came from: its output vocabulary decides what every
    logit means (a task vocabulary found from other training rows indexes other tokens), and its
    choice layout what the student was reading."""
    if saved.choice_layout != meta.choice_layout:
        raise ValueError(f"resume: the checkpoint in {where} was trained with data.choice_layout="
                         f"{saved.choice_layout}, this run has {meta.choice_layout}: start a new run (run.name)")
    if saved.output_vocab != meta.output_vocab:
        def size(v: list[int] | None) -> str:
            return "the whole vocabulary" if v is None else f"{len(v)} tokens"
        raise ValueError(f"resume: the checkpoint in {where} was trained with output vocabulary "
                         f"{size(saved.output_vocab)}, this run has {size(meta.output_vocab)} "
                         "(model.output_vocab or the training rows changed): start a new run (run.name)")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from sbs.student.ds_ops import use_own_ninja

    if config.get("torch_extensions_dir"):  # share DeepSpeed's JIT cache with the driver's
        os.environ["TORCH_EXTENSIONS_DIR"] = config["torch_extensions_dir"]
    use_own_ninja()  # and the ninja that wrote it (another one rebuilds it)
    cfg = StudentTrainConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.scale.cpus_per_worker)  # the worker owns exactly its CPUs
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    from sbs.student.data import valid_examples
    from sbs.student.models import build_trainable

    model, tok, kind = build_trainable(cfg.model)
    meta = make_meta(cfg, kind, config.get("output_vocab"))
    collate = Collator(tok, meta)
    valid = valid_examples(cfg, config["valid_ids"], config["valid_split"])
    net, module, opt, sched = setup_engine(cfg, model, device)
    module.train()

    # history: the per-step curve (rank 0's losses, the validation points), carried in every
    # checkpoint so a resumed run continues it rather than starting a new one
    state: dict[str, Any] = {"step": 0, "first_train_loss": None, "resumed_from": None, "history": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state = load_checkpoint(ckpt, cfg, net, module, opt, sched, meta)
        state["resumed_from"] = state["step"]
        state.setdefault("history", [])
        if rank == 0:
            print(f"[sbs train] resumed from step {state['step']}", flush=True)
    batches = micro_batches(ray.train.get_dataset_shard("train"), cfg, state["step"])
    bf16 = cfg.train.bf16 and cfg.train.engine == "ddp"  # DeepSpeed handles bf16 itself
    window: list[dict[str, float]] = []
    t0 = time.time()
    while state["step"] < cfg.train.steps:
        parts = optimizer_step(cfg, net, module, opt, sched, batches, collate, device, bf16)
        window.append(parts)
        state["step"] += 1
        step = state["step"]
        state["history"].append({"step": step, **{k: round(v, 5) for k, v in parts.items()},
                                 "lr": sched.get_last_lr()[0], "time": round(time.time(), 2)})
        if rank == 0 and step % cfg.train.log_every == 0:
            print(f"[sbs train] step {step}/{cfg.train.steps} loss {parts['loss']:.4f} "
                  f"({(time.time() - t0) / len(window):.2f} s/step)", flush=True)
        if step % cfg.train.eval_every and step != cfg.train.steps:
            continue
        keys = sorted(window[0])
        means = dict(zip(keys, _all_mean([sum(w[k] for w in window) / len(window) for k in keys], world)))
        if state["first_train_loss"] is None:
            state["first_train_loss"] = means["loss"]
        acc = validate(module, tok, meta, valid, cfg, rank, world, device)
        metrics = {"step": step, "val_accuracy": acc, **{f"train_{k}": v for k, v in means.items()},
                   "first_train_loss": state["first_train_loss"], "resumed_from": state["resumed_from"],
                   "global_batch": cfg.train.global_batch, "micro_batch": cfg.train.micro_batch,
                   "accumulation": cfg.accumulation, "num_workers": world,
                   "examples_seen": step * cfg.train.global_batch, "sec_per_step": (time.time() - t0) / len(window)}
        state["history"].append({"step": step, "val_accuracy": acc})
        if rank == 0:
            print(f"[sbs train] step {step}: val_accuracy {acc:.4f} train_loss {means['loss']:.4f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            has = save_checkpoint(Path(tmp), cfg, net, module, tok, opt, sched, meta, state, rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has else None,
                             checkpoint_dir_name=f"checkpoint_step{step:07d}")
        window, t0 = [], time.time()


def optimizer_step(cfg: StudentTrainConfig, net: Any, module: Any, opt: Any, sched: Any,
                   batches: Iterator[dict[str, Any]], collate: Collator, device: torch.device,
                   bf16: bool = False, loss_fn: Callable[..., Any] = compute_loss) -> dict[str, float]:
    """One optimizer step over `accumulation` micro batches; returns the mean loss parts.

    `net` is what forward runs on (a DeepSpeed engine, DDP, or the plain model outside Ray);
    `loss_fn` has compute_loss's signature (the step benchmark swaps in HF's default loss)."""
    accum, ds = cfg.accumulation, cfg.train.engine == "deepspeed"
    sums: dict[str, float] = {}
    for i in range(accum):
        batch = to_device(collate(next(batches)), device)
        last = i == accum - 1
        sync = net.no_sync() if (not ds and not last and hasattr(net, "no_sync")) else contextlib.nullcontext()
        with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, parts = loss_fn(net, batch, cfg.method.name, cfg.method.rationale_weight)
            if ds:
                net.backward(loss)  # DeepSpeed scales by 1/accumulation itself
                net.step()  # a no-op until the accumulation boundary
            else:
                (loss / accum).backward()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v / accum
    if not ds:
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return sums
