"""An accepted-rationales table built from the recorded PaLM outputs shipped with each dataset.

The teacher stage (`sbs rationales`) writes `<dir>/accepted/*.parquet`; this writes the same
table (`sbs.teacher.shards.ACCEPTED_SCHEMA`) from the recorded continuations (`ds.parse(ex.teacher,
ex)` over `ds.load(split)`), one sample per example: the rows the replay backend accepts with
filter.gold_consistency=false. Tests, the step benchmark and CPU runs use it to train without a teacher.

    python -m sbs.student.recorded svamp train runs/rationales/svamp
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sbs.datasets import get_dataset
from sbs.teacher.backends.replay import RECORDED_TEACHER
from sbs.teacher.shards import ACCEPTED_SCHEMA


def write_accepted(dataset: str, split: str, out_dir: str | Path, limit: int | None = None) -> tuple[Path, int, int]:
    """(parquet path, accepted rows, rejected rows) for the recorded outputs of one split."""
    ds = get_dataset(dataset)
    rows, rejected = [], 0
    for ex in ds.load(split, limit=limit):
        res = ds.parse(ex.teacher, ex)
        if not res.ok:
            rejected += 1
            continue
        rows.append({"id": ex.id, "dataset": ds.name, "input": ex.input, "gold": ex.label, "label": res.label,
                     "rationale": res.rationale, "rationales": [res.rationale], "votes": 1, "samples": 1,
                     "teacher_model": RECORDED_TEACHER})
    path = Path(out_dir) / "accepted" / f"{split}-recorded.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ACCEPTED_SCHEMA), path)
    return path, len(rows), rejected


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    p, n, r = write_accepted(sys.argv[1], sys.argv[2], sys.argv[3])
    print(f"{p}: {n} accepted, {r} rejected")
