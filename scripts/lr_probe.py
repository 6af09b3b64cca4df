"""Learning-rate probe: does the MiniLM encoder-decoder student escape a constant output?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lr_probe.py --lr 5e-4 --steps 300 --dataset svamp
    OMP_NUM_THREADS=1 .venv/bin/python scripts/lr_probe.py --lr 1e-4 --steps 300 --dataset svamp

Trains the `standard` method in-process with the training loop's own step (no Ray:
sbs.student.loop.optimizer_step, i.e. AdamW, 10 warm-up steps and gradient clipping, on batches of
16 drawn with a fixed seed) and every --every steps greedy-decodes the first 60 test examples through
sbs.predict.Student (the label-only path the evaluation uses), printing the test accuracy on them,
how many distinct outputs there are and the most common ones. A student that prints one output
for every input has collapsed, whatever its accuracy. A diagnostic, not a test.
"""
from __future__ import annotations

import argparse
import collections
import random
import time

import torch

from sbs.datasets import get_dataset
from sbs.predict import Student
from sbs.student.collate import Collator
from sbs.student.config import StudentTrainConfig
from sbs.student.loop import make_meta, make_optimizer, optimizer_step
from sbs.student.models import build_student


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--model", default="minilm")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ds = get_dataset(a.dataset)
    train, test = ds.load("train"), ds.load("test")[:60]
    cfg = StudentTrainConfig.model_validate({
        "model": {"name": a.model}, "method": {"name": "standard"},
        "data": {"dataset": a.dataset, "max_input_length": 96, "max_label_length": 24, "max_rationale_length": 64},
        "train": {"engine": "ddp", "lr": a.lr, "warmup_steps": 10, "global_batch": 16, "micro_batch": 16}})
    model, tok, kind = build_student(cfg.model)
    meta = make_meta(cfg, kind)
    collate = Collator(tok, meta)
    opt, sched = make_optimizer(cfg, model)
    rng, t0 = random.Random(0), time.time()
    for step in range(1, a.steps + 1):
        rows = [{"input": e.input, "label": e.label} for e in rng.sample(train, 16)]
        parts = optimizer_step(cfg, model, model, opt, sched, iter([rows]), collate, torch.device("cpu"))
        if step % 20 == 0:
            print(f"step {step} loss {parts['loss']:.3f}", flush=True)
        if step % a.every == 0:
            preds = [r.label for r in Student(model, tok, meta).predict([e.input for e in test], batch_size=30)]
            model.train()
            acc = sum(ds.score(pr, e) for pr, e in zip(preds, test)) / len(test)
            c = collections.Counter(preds)
            print(f"step {step} t={time.time() - t0:.0f}s acc={acc:.3f} distinct={len(c)}/{len(test)} "
                  f"top={c.most_common(2)}", flush=True)


if __name__ == "__main__":
    main()
