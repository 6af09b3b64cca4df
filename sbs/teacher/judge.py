"""Parse each teacher sample, then decide each example: self-consistency vote and filters.

`parse_batch` runs inside Ray Data (a stateless task) and adds the parse result of every sample;
`decide` runs in the driver once all k samples of an example are in, and returns exactly one
accepted or rejected row for it. Rejection reasons are stable strings (rejects.reason values):
the dataset parser's reasons (empty_output, no_answer_marker, ...) plus the ones below.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from sbs.datasets import Example, TaskDataset

TEACHER_ERROR = "teacher_error"      # the backend returned no text (HTTP error, timeout, exception)
TEACHER_CRASHED = "teacher_crashed"  # the teacher actor died on this row on every retry
GOLD_MISMATCH = "gold_mismatch"      # majority label disagrees with gold (filter.gold_consistency)
EXEMPLAR = "exemplar"                # the example is a few-shot exemplar of the prompt: never an output

RAW_CAP = 20_000  # characters of teacher text kept per sample in rejects.raw (100k-char outputs exist)

# Columns the driver needs; prompts and fields stop here (they are the bulk of each row).
DRIVER_COLUMNS = ("id", "sample", "shard", "shard_expected", "shard_exemplars", "input", "gold", "text",
                  "error", "tokens_in", "tokens_out")


def example_of(row: dict[str, Any]) -> Example:
    return Example(row["id"], row["input"], row["gold"], json.loads(row["fields"] or "{}"))


def parse_batch(batch: pa.Table, ds: TaskDataset) -> pa.Table:
    """Add p_ok, p_rationale, p_label, p_key (vote key), p_correct, p_reason, p_detail."""
    rows = batch.to_pylist()
    out: dict[str, list[Any]] = {c: [r.get(c) for r in rows] for c in DRIVER_COLUMNS}
    new: dict[str, list[Any]] = {k: [] for k in ("p_ok", "p_rationale", "p_label", "p_key", "p_correct",
                                                   "p_reason", "p_detail")}
    for r, i in zip(rows, range(len(rows))):
        text = r.get("text") or ""
        out["text"][i] = text[:RAW_CAP]
        ok, rat, lab, key, correct, reason, detail = False, None, None, None, None, None, None
        if r.get("error") and not text:
            reason, detail = TEACHER_ERROR, str(r["error"])[:2000]
        else:
            ex = example_of(r)
            res = ds.parse(text, ex)
            if res.ok:
                ok, rat, lab = True, res.rationale, res.label
                key = _vote_key(ds, lab, ex)
                correct = ds.score(lab, ex) if ex.label is not None else None
            else:
                reason, detail = res.reason, res.detail
        for k, v in zip(new, (ok, rat, lab, key, correct, reason, detail)):
            new[k].append(v)
    return pa.table({**out, **new})


def _vote_key(ds: TaskDataset, label: str, ex: Example) -> str:
    """Labels that mean the same answer vote together (e.g. '(84 / 2)' and '42' on SVAMP)."""
    try:
        canon = ds.normalize_label(label, ex)
    except Exception:
        canon = None
    return canon if canon is not None else label


def decide(samples: list[dict[str, Any]], dataset: str, teacher_model: str, gold_filter: bool
           ) -> tuple[bool, dict[str, Any], bool | None]:
    """(accepted?, output row, majority label correct vs gold or None without gold)."""
    samples = sorted(samples, key=lambda s: s["sample"])
    first = samples[0]
    base = {"id": first["id"], "dataset": dataset, "input": first["input"], "gold": first["gold"]}
    has_gold = first["gold"] is not None
    ok = [s for s in samples if s["p_ok"]]
    if not ok:
        reasons = Counter(s["p_reason"] for s in samples)
        reason = max(reasons, key=lambda r: (reasons[r], -[s["p_reason"] for s in samples].index(r)))
        detail = next(s["p_detail"] for s in samples if s["p_reason"] == reason)
        return False, {**base, "reason": reason, "detail": detail or "", "raw": _raw(samples)}, (
            False if has_gold else None)
    counts = Counter(s["p_key"] for s in ok)
    order = [s["p_key"] for s in ok]
    best = max(counts, key=lambda k: (counts[k], -order.index(k)))  # ties: the earliest sample wins
    agree = [s for s in ok if s["p_key"] == best]
    label, correct = agree[0]["p_label"], agree[0]["p_correct"]
    if gold_filter and has_gold and not correct:
        detail = f"teacher majority {label!r} ({len(agree)}/{len(samples)} votes) != gold {first['gold']!r}"
        return False, {**base, "reason": GOLD_MISMATCH, "detail": detail, "raw": _raw(samples)}, False
    row = {**base, "label": label, "rationale": agree[0]["p_rationale"],
           "rationales": [s["p_rationale"] for s in agree], "votes": len(agree), "samples": len(samples),
           "teacher_model": teacher_model}
    return True, row, (bool(correct) if has_gold else None)


def crashed_sample(row: dict[str, Any], detail: str) -> dict[str, Any]:
    """A sample whose teacher call never returned (its actor died every time)."""
    return {**{c: row.get(c) for c in DRIVER_COLUMNS}, "text": "", "error": detail, "tokens_in": 0, "tokens_out": 0,
            "p_ok": False, "p_rationale": None, "p_label": None, "p_key": None, "p_correct": None,
            "p_reason": TEACHER_CRASHED, "p_detail": detail}


def exemplar_reject(row: dict[str, Any], dataset: str) -> dict[str, Any]:
    return {"id": row["id"], "dataset": dataset, "input": row["input"], "gold": row["gold"], "reason": EXEMPLAR,
            "detail": "used as a few-shot exemplar in the teacher prompt (its answer is in the prompt)", "raw": ""}


def _raw(samples: list[dict[str, Any]]) -> str:
    """One sample: its text. Several: a JSON list of texts, in sample order."""
    texts = [s.get("text") or "" for s in samples]
    return texts[0] if len(texts) == 1 else json.dumps(texts, ensure_ascii=False)
