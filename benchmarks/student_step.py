"""Student step cost: multitask vs standard on the same batch, sbs's causal loss vs HF's default.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_step.py      # Gemma 3 270M, CQA, batch 16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/student_step.py --model minilm --dataset svamp
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/student_step.py --model tiny-t5 --steps 20
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/student_step.py --lora-r 16 --choice-layout before  # sweep 12's inputs

One process, no Ray: a training worker's own step (sbs.student.loop.optimizer_step: Collator,
loss, AdamW, warm-up schedule and gradient clipping),
on real rows with the recorded PaLM rationales. Prints seconds per step (median of --steps after
--warmup, the variants taken round by round: each round steps every variant once, so a machine
that drifts during the run moves them alike), the collation share of a step, and these ratios:
multitask / standard (sbs runs the
causal multi-task step as one pass over the shared input; the paper's two-pass step costs one
extra forward+backward); for causal students, HF's default loss (`model(..., labels=)`: logits
over the whole vocabulary at every position) / sbs's (logits at target positions only), same
batch; sbs's standard step with the padding run through every layer / the same step skipping it,
the last layer run whole in both (`sbs.student.unpad`); sbs's standard step with the last layer run at every live position /
the same step running its query, output projection and MLP at the LM head's positions only
(`unpad.whole_last_layer()`); and sbs's standard step with the modules' own eager forward / the same
step with fused kernels and LoRA functions (`sbs.student.fused`; the first step, which compiles the
kernels, is a warm-up step).
Causal students are timed with the whole vocabulary and with the task's
(`model.output_vocab=task`, docs/student.md), unless --output-vocab picks one. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch

from sbs.student.collate import Collator
from sbs.student.config import ModelConfig, StudentTrainConfig
from sbs.student.data import read_accepted
from sbs.student.fused import eager
from sbs.student.losses import compute_loss
from sbs.student.loop import make_meta, make_optimizer, optimizer_step
from sbs.student.models import build_trainable
from sbs.student.recorded import write_accepted
from sbs.student.unpad import padded, whole_last_layer


def recorded_rows(dataset: str, n: int | None, layout: str = "after") -> list[dict[str, str]]:
    from sbs.datasets import get_dataset

    ds = get_dataset(dataset)
    split = "train" if "train" in ds.shipped_splits else "valid"
    with tempfile.TemporaryDirectory() as d:
        write_accepted(dataset, split, d)
        acc = read_accepted(d)
    ex = [e for e in ds.load(split) if e.id in acc][:n]  # n=None: all of them
    return [{"id": e.id, "input": ds.student_text(e.fields, layout), "label": e.label,
             "rationale": acc[e.id]["rationale"]} for e in ex]


def hf_default_loss(model, batch, method: str, weight: float):
    """HF's own causal loss on sbs's standard batch: full-vocabulary logits at every position."""
    b = batch["label"]
    loss = model(input_ids=b["input_ids"], attention_mask=(b["segments"] >= 0).long(), labels=b["labels"]).loss
    return loss, {"loss": loss.item()}


def make_cfg(args, method: str, batch: int, vocab: str = "full") -> StudentTrainConfig:
    return StudentTrainConfig.model_validate({
        "model": {"name": args.model, "lora_r": args.lora_r, "lora_layers": args.lora_layers,
                  "output_vocab": vocab},
        "data": {"dataset": args.dataset, "rationales": "recorded", "max_input_length": args.max_input,
                 "max_label_length": args.max_label, "max_rationale_length": args.max_rationale,
                 "choice_layout": args.choice_layout},
        "method": {"name": method},
        "train": {"engine": "ddp", "global_batch": batch, "micro_batch": batch, "lr": 1e-5, "warmup_steps": 1}})


class Variant:
    """One way to take the training loop's own step (sbs.student.loop.optimizer_step: AdamW,
    warm-up schedule, gradient clipping) on `rows`: a method, a vocabulary, a loss, a context."""

    def __init__(self, model, tok, kind: str, rows, method: str, args, loss_fn=compute_loss,
                 vocab: list[int] | None = None, ctx=contextlib.nullcontext):
        self.model, self.rows, self.loss_fn, self.ctx, self.method = model, rows, loss_fn, ctx, method
        self.cfg = make_cfg(args, method, len(rows))
        self.collate = Collator(tok, make_meta(self.cfg, kind, vocab))
        self.step_s: list[float] = []
        self.collate_s: list[float] = []

    def run(self, opt, sched) -> None:
        """One optimizer step (the variants share one optimizer: its state costs the same for each,
        and full finetuning's AdamW state is 2 GB a copy)."""
        self.model.train()
        with self.ctx():
            optimizer_step(self.cfg, self.model, self.model, opt, sched, iter([self.rows]), self.collate,
                           torch.device("cpu"), loss_fn=self.loss_fn)

    def step(self, opt, sched, record: bool) -> None:
        """`run`, timed apart from collating the rows."""
        t0 = time.perf_counter()
        self.collate(self.rows)  # timed alone: the step collates the same rows again
        t1 = time.perf_counter()
        self.run(opt, sched)
        t2 = time.perf_counter()
        if record:
            self.collate_s.append(t1 - t0)
            self.step_s.append(t2 - t1)

    def result(self) -> dict[str, float | int]:
        step, col = statistics.median(self.step_s), statistics.median(self.collate_s)
        return {"step_s": step, "collate_s": col, "collate_share": col / step,
                **batch_counts(self.collate(self.rows))}

    def profile(self, opt, sched) -> None:
        """One more step under torch.profiler; prints its table of ops."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            self.run(opt, sched)
        n = batch_counts(self.collate(self.rows))
        print(f"{self.method} step under torch.profiler: rows padded to {n['width']} positions, "
              f"{n['positions']} in all, {n['tokens']} of them tokens\n"
              + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def time_interleaved(variants: dict[str, Variant], opt, sched, warmup: int, steps: int) -> dict[str, dict]:
    """Seconds per step of every variant, median of `steps` after `warmup`, taken round by round
    (each round steps every variant once), so that a machine that slows down or speeds up during
    the run moves every variant alike and the ratios between them stay put."""
    for i in range(warmup + steps):
        for v in variants.values():
            v.step(opt, sched, record=i >= warmup)
    return {name: v.result() for name, v in variants.items()}


def batch_counts(batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    """What a step runs over, summed over its passes (multitask on a causal student: one): positions
    (padded), tokens (real) and target tokens (where a loss is taken), and the widest row's length;
    a seq2seq batch counts its encoder input."""
    n = {"positions": 0, "tokens": 0, "targets": 0, "width": 0}
    for b in batches.values():
        n["positions"] += b["input_ids"].numel()
        n["width"] = max(n["width"], b["input_ids"].shape[1])
        n["tokens"] += int((b["segments"] >= 0).sum()) if "segments" in b else int(b["attention_mask"].sum())
        n["targets"] += int((b["labels"] != -100).sum())
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m", help="student spec (gemma3-270m, minilm, tiny-t5, HF name/path)")
    p.add_argument("--dataset", default="cqa", help="rows with recorded rationales from this dataset")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full finetuning)")
    p.add_argument("--lora-layers", type=int, default=0, help="LoRA on the top N layers only (0: all)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    p.add_argument("--choice-layout", choices=["after", "before", "none"], default="after",
                   help="data.choice_layout of a dataset whose input lists choices (CQA; sweep 12 trains with before)")
    p.add_argument("--max-input", type=int, default=128)
    p.add_argument("--max-label", type=int, default=32)
    p.add_argument("--max-rationale", type=int, default=128)
    p.add_argument("--output-vocab", choices=["full", "task", "both"], default="both",
                   help="model.output_vocab to time sbs's steps with ('both': each, same batch); 'task' finds "
                   "the vocabulary from every recorded training row, as training does (HF's default loss "
                   "always takes the whole vocabulary)")
    p.add_argument("--skip-hf-loss", action="store_true", help="causal students: do not time HF's default loss")
    p.add_argument("--quick", action="store_true", help="tiny-gemma3, batch 8, 3 steps: checks the script, "
                   "not the machine")
    p.add_argument("--profile", nargs="?", const="standard", choices=["standard", "multitask"],
                   help="also print torch.profiler's table of ops for one sbs step of this method (default "
                   "standard; the last vocabulary timed)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.quick:
        args.model, args.batch, args.steps = "tiny-gemma3", 8, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, kind = build_trainable(ModelConfig(name=args.model, lora_r=args.lora_r, lora_layers=args.lora_layers))
    rows = recorded_rows(args.dataset, args.batch, args.choice_layout)
    kinds = {"full": ["full"], "task": ["task"], "both": ["full", "task"]}[args.output_vocab]
    if kind != "causal":  # a task vocabulary is for causal students
        kinds = ["full"]
    vocabs: dict[str, list[int]] = {}
    if "task" in kinds:
        from sbs.student.vocab import task_vocab

        every = recorded_rows(args.dataset, None, args.choice_layout)
        for m in ("standard", "multitask"):  # each method's own training rows (standard's hold no rationale)
            vocabs[m] = task_vocab(make_cfg(args, m, args.batch, "task"),
                                   [dict(r, rationale=r["rationale"] if m == "multitask" else "") for r in every])
    variants: dict[str, Variant] = {}
    for v in kinds:
        for m in ("standard", "multitask"):
            variants[m + ("_task_vocab" if v == "task" else "")] = Variant(
                model, tok, kind, rows, m, args, vocab=vocabs.get(m) if v == "task" else None)
    if kind == "causal":  # the last vocabulary's standard step with the padding run through every layer,
        v = kinds[-1]     # with the last layer run at every position, and with the eager kernels
        for ref, ctx in (("padded", padded), ("whole_last_layer", whole_last_layer), ("eager", eager)):
            variants[f"standard_{ref}" + ("_task_vocab" if v == "task" else "")] = Variant(
                model, tok, kind, rows, "standard", args, vocab=vocabs.get("standard") if v == "task" else None,
                ctx=ctx)
    if kind == "causal" and not args.skip_hf_loss:
        variants["standard_hf_loss"] = Variant(model, tok, kind, rows, "standard", args, hf_default_loss)
    opt, sched = make_optimizer(next(iter(variants.values())).cfg, model)
    res = time_interleaved(variants, opt, sched, args.warmup, args.steps)
    if args.profile:  # one more step of that variant, with the optimizer the timed steps warmed up
        variants[args.profile + ("_task_vocab" if kinds[-1] == "task" else "")].profile(opt, sched)
    out = {"model": args.model, "dataset": args.dataset, "choice_layout": args.choice_layout,
           "lora_r": args.lora_r, "lora_layers": args.lora_layers,
           "output_vocab": args.output_vocab, **{f"{m}_vocab_size": len(v) for m, v in vocabs.items()},
           "batch": args.batch, "threads": torch.get_num_threads(), "steps": args.steps,
           **{f"{m}_{k}": round(v, 4) for m, r in res.items() for k, v in r.items()}}
    for suffix in [s for s in ("", "_task_vocab") if "standard" + s in res]:
        std = res["standard" + suffix]["step_s"]
        out[f"ratio_multitask_over_standard{suffix}"] = round(res["multitask" + suffix]["step_s"] / std, 3)
        # causal students: the floor of that ratio for the body's linear layers, the tokens each step
        # runs them over (a seq2seq batch counts its encoder input only)
        out[f"tokens_multitask_over_standard{suffix}"] = round(
            res["multitask" + suffix]["tokens"] / res["standard" + suffix]["tokens"], 3)
        if "standard_hf_loss" in res:
            out[f"ratio_hf_loss_over_sbs{suffix}"] = round(res["standard_hf_loss"]["step_s"] / std, 3)
        if "standard_whole_last_layer" + suffix in res:  # each saving apart: padding, then the last layer
            whole = res["standard_whole_last_layer" + suffix]["step_s"]
            out[f"ratio_whole_last_layer_over_read_only{suffix}"] = round(whole / std, 3)
            if "standard_padded" + suffix in res:
                out[f"ratio_padded_over_unpadded{suffix}"] = round(res["standard_padded" + suffix]["step_s"] / whole, 3)
        if "standard_eager" + suffix in res:
            out[f"ratio_eager_over_fused{suffix}"] = round(res["standard_eager" + suffix]["step_s"] / std, 3)
    for m, r in res.items():
        print(f"{m:26s}: {r['step_s']:.3f} s/step, collation {r['collate_s'] * 1000:.1f} ms "
              f"({100 * r['collate_share']:.1f}% of the step)")
    for k, v in out.items():
        if k.startswith(("ratio_", "tokens_")):
            print(f"{k}: {v:.2f}x")
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
