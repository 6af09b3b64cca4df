"""Kill-and-resume: `sbs rationales` in a subprocess is SIGKILLed after some shards land; the rerun
with the same output path finishes with every id exactly once in accepted ∪ rejects, and the
shards committed before the kill are kept as they were (not redone)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from sbs.datasets import get_dataset

ROOT = Path(__file__).resolve().parents[1]


def _kill_tree(tag: str) -> None:
    """SIGKILL the processes this test started (their command line names our private Ray dir)."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if tag in (p / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(p.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def test_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "out"
    ray_dir = tempfile.mkdtemp(prefix="sbsray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "SBS_RAY_TEMP_DIR": ray_dir, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", "import sys; from sbs.cli import main; sys.exit(main())", "rationales",
           "--config", str(ROOT / "configs/teacher/svamp.yaml"), f"out={out}", "limit=300", "shard_size=10", "--num-cpus", "2"]
    ledger = out / "_ledger"
    try:
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None:
            if ledger.is_dir() and len(list(ledger.glob("shard-*.json"))) >= 3:
                break
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        _kill_tree(ray_dir)
        done = {f.name: f.stat().st_mtime_ns for f in ledger.glob("shard-*.json")}
        assert 3 <= len(done) < 30, f"kill landed at {len(done)}/30 shards; rc={p.returncode}"
        kept = {f.name: f.stat().st_mtime_ns for f in (out / "accepted").glob("shard-*.parquet")
                if f.stem + ".json" in done}
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        _kill_tree(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    ids = [row["id"] for d in ("accepted", "rejects") for row in pq.read_table(out / d, columns=["id"]).to_pylist()]
    want = [e.id for e in get_dataset("svamp").load("train", limit=300)]
    assert len(ids) == len(set(ids)) == len(want) and set(ids) == set(want)
    assert {f.name: f.stat().st_mtime_ns for f in ledger.glob("shard-*.json") if f.name in done} == done
    assert {f.name: f.stat().st_mtime_ns for f in (out / "accepted").glob("*.parquet") if f.name in kept} == kept
    assert not list(out.rglob(".*tmp*")), "a temp file was left behind"
    import json

    stats = json.loads((out / "stats.json").read_text())
    assert stats["examples_in"] == 300 and stats["counts_add_up"] and stats["this_run"]["shards_already_done"] == len(done)


def test_reopening_the_ledger_removes_a_killed_writers_temp_files(tmp_path):
    """A kill between a temp file's write and its rename (the rare case the SIGKILL test can hit)
    leaves `.shard-N.parquet.tmp-<pid>`; the next run's Ledger removes it and keeps committed shards."""
    from sbs.teacher.shards import Ledger, Shard

    ledger = Ledger(tmp_path)
    ledger.commit(Shard(0, 0, 1), [], [], {"shard": 0})
    committed = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("shard-*")}
    orphans = [tmp_path / "rejects" / ".shard-00001.parquet.tmp-12137",
               tmp_path / "accepted" / ".shard-00001.parquet.tmp-12137",
               tmp_path / "_ledger" / ".shard-00001.json.tmp-12137"]
    for o in orphans:
        o.write_bytes(b"half-written")
    reopened = Ledger(tmp_path)
    assert not any(o.exists() for o in orphans)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("shard-*")} == committed
    assert reopened.done(Shard(0, 0, 1)) and not reopened.done(Shard(1, 1, 2))
