"""Label-only evaluation of an exported student on a dataset split, scored by the dataset.

Predictions go through `sbs.predict.Student` (the same path as serving): the label task only,
with its short max length. `explain=True` also generates rationales (multitask / single_task)
and writes them next to the predictions; the accuracy is the label task's either way.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sbs.datasets import SplitUnavailable, get_dataset
from sbs.datasets.base import ChoiceLayout
from sbs.export import ExportMeta
from sbs.predict import Student


DECODINGS = ("generate", "choices")


def untrained(model: str, dataset: str, choice_layout: ChoiceLayout = "after", max_input_length: int = 128,
              max_label_length: int = 16) -> Student:
    """A base model before any training, read as a standard-method student: what training adds is
    measured against it (the demo's reference; scripts/choice_layouts.py)."""
    from sbs.student.config import ModelConfig
    from sbs.student.models import build_student

    net, tok, kind = build_student(ModelConfig(name=model))
    return Student(net, tok, ExportMeta(method="standard", dataset=dataset, model_kind=kind, base_model=model,
                                        max_input_length=max_input_length, max_label_length=max_label_length,
                                        choice_layout=choice_layout))


def candidates_for(ds: Any, examples: list[Any]) -> list[list[str]]:
    """Each example's closed answer set, or a ValueError naming the option when there is none."""
    out = [ds.candidates(e.fields) for e in examples]
    if any(c is None for c in out):
        raise ValueError(f"--decoding choices: {ds.name} has open answers (no label space or choices to rank); "
                         "use --decoding generate")
    return out


def evaluate(export_dir: str | Path, split: str = "test", dataset: str | None = None, batch_size: int = 32,
             limit: int | None = None, explain: bool = False, student: Student | None = None,
             device: str = "cpu", dtype: Any = None, decoding: str = "generate",
             normalize: bool = False) -> dict[str, Any]:
    """{"accuracy", "n", "correct", ..., "predictions": [...]} for one split.

    decoding="generate": the label task's greedy output, scored by the dataset (the paper's metric).
    decoding="choices": the candidate answer the label task finds most likely (closed label spaces:
    NLI labels, CQA choices, a generic dataset's label_space); `normalize` ranks by per-token mean."""
    if decoding not in DECODINGS:
        raise ValueError(f"--decoding: {decoding!r}; choose one of {list(DECODINGS)}")
    meta = ExportMeta.read(export_dir) if student is None else student.meta
    name = dataset or meta.dataset
    ds = get_dataset(name)
    try:
        examples = ds.load(split, limit=limit)
    except SplitUnavailable as e:
        raise ValueError(f"--split: {e}") from None
    if not examples:
        raise ValueError(f"--split: {name}/{split} has no examples")
    cands = candidates_for(ds, examples) if decoding == "choices" else None
    student = student or Student.load(export_dir, device=device, dtype=dtype)
    t0 = time.time()
    preds = student.predict([ds.student_text(e.fields, student.meta.choice_layout) for e in examples], explain=explain, batch_size=batch_size,
                            candidates=cands, normalize=normalize)
    seconds = time.time() - t0
    rows, correct = [], 0
    for e, p in zip(examples, preds):
        ok = ds.score(p.label, e)
        correct += ok
        row = {"id": e.id, "gold": e.label, "pred": p.label, "correct": ok}
        if explain:
            row["rationale"] = p.rationale
        if p.scores is not None:
            row["scores"] = {k: round(v, 4) for k, v in p.scores.items()}
        rows.append(row)
    counts = Counter(p.label for p in preds)
    top = counts.most_common(1)[0]
    return {"export_dir": str(export_dir), "dataset": name, "split": split, "method": meta.method,
            "model_kind": meta.model_kind, "base_model": meta.base_model, "decoding": decoding,
            "normalize": normalize if decoding == "choices" else None, "n": len(examples), "correct": correct,
            "accuracy": correct / len(examples),
            # a collapsed student says one thing to every input: how many different labels it gave
            "distinct_predictions": len(counts), "top_prediction": top[0],
            "top_prediction_share": round(top[1] / len(preds), 4), "explain": explain, "batch_size": batch_size,
            "seconds": round(seconds, 3), "examples_per_s": round(len(examples) / max(seconds, 1e-9), 2),
            "predictions": rows}


def write_results(results: dict[str, Any], out: str | Path) -> Path:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return p
