"""The training objective per method.

standard / distill / single_task: one cross-entropy on the label-task target (what the target
holds differs: gold label, teacher label, or "rationale So the answer is label").
multitask (distilling step-by-step): L = L_label + lambda * L_rationale. Seq2seq students run
two forward passes over the same inputs with different task prefixes, as in the paper; causal
students run one pass over the shared input with both task branches (`sbs.student.causal`),
which gives the same two losses.
"""
from __future__ import annotations

from typing import Any

import torch

from sbs.student.causal import branch_losses
from sbs.student.collate import Batch


def task_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean token cross-entropy over the unmasked target tokens."""
    if "segments" in batch:  # causal: the LM head on target positions only
        return branch_losses(model, batch, 1)[0]
    return model(**batch).loss  # seq2seq: HF computes it from `labels`


def compute_loss(model: Any, batch: dict[str, Batch], method: str, rationale_weight: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss to backpropagate, detached parts for logging)."""
    if "joint" in batch:  # causal multitask: both branches in one pass over the shared prefix
        label_loss, rationale_loss = branch_losses(model, batch["joint"], 2)
        loss = label_loss + rationale_weight * rationale_loss
        return loss, {"loss": loss.item(), "label_loss": label_loss.item(), "rationale_loss": rationale_loss.item()}
    label_loss = task_loss(model, batch["label"])
    if method != "multitask":
        return label_loss, {"loss": label_loss.item(), "label_loss": label_loss.item()}
    rationale_loss = task_loss(model, batch["rationale"])
    loss = label_loss + rationale_weight * rationale_loss
    return loss, {"loss": loss.item(), "label_loss": label_loss.item(), "rationale_loss": rationale_loss.item()}


def to_device(batch: dict[str, Batch], device: torch.device | str) -> dict[str, Batch]:
    return {k: {n: t.to(device) for n, t in v.items()} for k, v in batch.items()}
