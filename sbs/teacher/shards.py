"""The shard ledger: deterministic input shards, each written atomically, skipped once done.

Input rows are numbered in file order and cut into shards of `shard_size` rows. A finished shard
is three files, each written to a temp name and renamed into place (rename is atomic on POSIX):
`rejects/shard-NNNNN.parquet`, `accepted/shard-NNNNN.parquet`, then `_ledger/shard-NNNNN.json`
(its counts). The ledger file is the commit marker: a shard is done iff it exists. A driver killed
at any instant leaves every shard either wholly committed or not committed, and a rerun redoes
exactly the uncommitted ones, so each id lands once in accepted ∪ rejects. A kill between a temp
file's write and its rename leaves `.<name>.tmp-<pid>` behind; opening the ledger removes those.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

# The accepted-rationales table: the teacher stage's output and the student's input (also written
# from the recorded outputs by sbs.student.recorded). `teacher_model` is the backend/model that
# wrote the row (TeacherBackend.describe); an input row's `teacher` is a recorded raw continuation.
ACCEPTED_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("input", pa.string()), ("gold", pa.string()),
    ("label", pa.string()), ("rationale", pa.string()), ("rationales", pa.list_(pa.string())),
    ("votes", pa.int64()), ("samples", pa.int64()), ("teacher_model", pa.string())])
REJECTS_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("input", pa.string()), ("gold", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class InputSource:
    """Where the input rows come from. `fmt="shipped"`: the dataset's own Parquet layout (turned
    into Examples by the dataset); `fmt="examples"`: id, input, label, fields (JSON), teacher."""
    path: str
    fmt: str
    rows: int
    # how run.json names the input: not the absolute path, so an output dir (and its resume)
    # moves with the checkout or the installed package
    name: str = ""


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(n_rows: int, shard_size: int) -> list[Shard]:
    return [Shard(i, s, min(n_rows, s + shard_size)) for i, s in enumerate(range(0, n_rows, shard_size))]


def parquet_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def read_rows(path: str, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that overlap them."""
    f = pq.ParquetFile(path)
    groups, offset, first = [], 0, None
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return f.schema_arrow.empty_table()
    t = f.read_row_groups(groups)
    return t.slice(start - first, stop - start)


class Ledger:
    """The output directory: accepted/, rejects/, _ledger/ and stats.json."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        for d in ("accepted", "rejects", "_ledger"):
            (self.out / d).mkdir(parents=True, exist_ok=True)
            for orphan in (self.out / d).glob(".*.tmp-*"):  # a killed run's half-written file
                orphan.unlink(missing_ok=True)

    def done(self, shard: Shard) -> bool:
        return (self.out / "_ledger" / f"{shard.name}.json").is_file()

    def commit(self, shard: Shard, accepted: list[dict[str, Any]], rejects: list[dict[str, Any]],
               counts: dict[str, Any]) -> None:
        """Write the shard's three files atomically, the ledger entry last."""
        _write_parquet(self.out / "rejects" / f"{shard.name}.parquet", rejects, REJECTS_SCHEMA)
        _write_parquet(self.out / "accepted" / f"{shard.name}.parquet", accepted, ACCEPTED_SCHEMA)
        _atomic_write(self.out / "_ledger" / f"{shard.name}.json", json.dumps(counts).encode())

    def entries(self) -> Iterator[dict[str, Any]]:
        for p in sorted((self.out / "_ledger").glob("shard-*.json")):
            yield json.loads(p.read_text())

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to resume into a directory written with different inputs or settings."""
        p = self.out / "run.json"
        if p.is_file():
            old = json.loads(p.read_text())
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if diff:
                raise FileExistsError(
                    f"{self.out}: holds a run with different settings ({', '.join(diff)}: "
                    f"{[old.get(k) for k in diff]} vs {[fingerprint.get(k) for k in diff]}); "
                    f"choose a new out directory or remove the old one")
            return
        _atomic_write(p, json.dumps(fingerprint, indent=1).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)
