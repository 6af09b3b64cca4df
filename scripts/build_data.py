"""Convert the paper's published files (../shared/data) into the compressed Parquet shipped in sbs/data.

Run once by a maintainer; the output is committed so a fresh clone works offline:

    python scripts/build_data.py --src ../shared/data/distilling-step-by-step/datasets

Each row keeps the dataset's own gold fields, a stable `id`, and `teacher`: the raw PaLM 540B
continuation recorded for that example (same order as the gold file, concatenated over CoT_i).
"""
from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sbs.datasets import get_dataset

SPLITS = {"svamp": ["train", "test"], "cqa": ["train", "test"], "esnli": ["valid", "test"], "anli1": ["valid", "test"]}


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_teacher(root: Path, split: str) -> list[str]:
    files = glob.glob(str(root / "llm" / f"{split}_CoT_*.json"))
    files.sort(key=lambda f: int(re.search(r"_CoT_(\d+)\.json$", f).group(1)))
    out: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            out.extend(json.load(fh))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="../shared/data/distilling-step-by-step/datasets")
    ap.add_argument("--dst", default=str(Path(__file__).resolve().parents[1] / "sbs" / "data"))
    args = ap.parse_args()
    for name, splits in SPLITS.items():
        root = Path(args.src) / name
        for split in splits:
            gold = _read_jsonl(str(root / f"{name}_{split}.json"))
            teacher = _read_teacher(root, split)
            if len(teacher) != len(gold):
                raise SystemExit(f"{name}/{split}: {len(gold)} gold rows but {len(teacher)} teacher outputs")
            ds = get_dataset(name)  # the dataset module owns its shipped column layout
            rows = [ds.shipped_row(g, split, i) for i, g in enumerate(gold)]
            for r, t in zip(rows, teacher):
                r["teacher"] = t
            ids = [r["id"] for r in rows]
            if len(set(ids)) != len(ids):
                raise SystemExit(f"{name}/{split}: duplicate ids")
            out = Path(args.dst) / name / f"{split}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd", compression_level=19)
            print(f"{name}/{split}: {len(rows)} rows -> {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
