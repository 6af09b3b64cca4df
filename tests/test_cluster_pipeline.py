"""The whole pipeline through `ray job submit`, against a real Ray head started here.

A private head on 127.0.0.1 (own temp dir and ports, 2 CPUs, dashboard for the Jobs API) runs
scripts/run_pipeline.sh: the replay teacher on a small SVAMP slice -> the builtin tiny T5 for a
few steps -> label-only evaluation, each stage a `ray job submit --working-dir . -- python
jobs/...` that the script waits for. Then the script must stop at a failing stage. The head is
stopped through its own processes (found by its temp dir); `ray stop` would end every Ray on
the host.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SCRIPT = ROOT / "scripts" / "run_pipeline.sh"
TEACHER_LIMIT = 24

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def head_env() -> dict[str, str]:
    # Jobs run `python` from PATH: put this interpreter's venv first, as an activated venv would.
    # Auth disabled on both sides (Ray 2.60 would turn token auth on if a token file exists).
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="disabled",
                RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions")))


def stop_head(temp_dir: str) -> list[int]:
    """End exactly the processes of the head under `temp_dir` (and their children)."""
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                procs[p.pid] = p
                procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return sorted(procs)


@pytest.fixture(scope="module")
def head():
    """A Ray head of our own: yields the dashboard URL for `ray job submit --address`."""
    temp_dir = tempfile.mkdtemp(prefix="sbsray", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dash, nm, om, client, agent, agent_grpc, rt_agent, metrics = free_ports(9)
    cmd = [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", temp_dir,
           "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats",
           "--node-manager-port", str(nm), "--object-manager-port", str(om), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics)]
    try:
        r = subprocess.run(cmd, env=head_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"ray start failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        yield f"http://127.0.0.1:{dash}"
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not stop_head(temp_dir), "head processes survived"


def run_pipeline(address: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(head_env(), RAY_ADDRESS=address, RAY=str(RAY))
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def tiny_pipeline_args(work: Path) -> list[str]:
    teacher, export = work / "teacher", work / "export"
    train = ["model.name=tiny-t5", f"data.rationales={teacher}", "data.max_input_length=48",
             "data.max_label_length=12", "data.max_rationale_length=24", "data.valid_limit=8",
             "train.steps=3", "train.eval_every=3", "train.global_batch=4", "train.micro_batch=4",
             "train.warmup_steps=0", "train.eval_batch=8", "train.engine=ddp", "scale.num_workers=1",
             "scale.cpus_per_worker=1", f"run.storage_path={work / 'runs'}", "run.name=tiny", f"run.export_dir={export}"]
    return ["--teacher", "configs/teacher/svamp.yaml", "--teacher-arg", f"limit={TEACHER_LIMIT}",
            "--teacher-arg", f"out={teacher}",
            "--train", "configs/student/svamp_multitask.yaml", *[a for o in train for a in ("--train-arg", o)],
            "--eval", str(export), "--eval-arg", "--split=test", "--eval-arg", "--limit=8",
            "--eval-arg", f"--out={work / 'eval.json'}"]


def test_tiny_pipeline_through_ray_job_submit(head, tmp_path):
    r = run_pipeline(head, *tiny_pipeline_args(tmp_path))
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    for stage in ("rationales", "train", "eval"):
        assert f"== run_pipeline: {stage}: " in r.stderr and "--working-dir ." in r.stderr
    assert log.count("succeeded") >= 3, log[-3000:]

    stats = json.loads((tmp_path / "teacher" / "stats.json").read_text())
    assert stats["examples_in"] == TEACHER_LIMIT and stats["counts_add_up"]
    assert stats["accepted"] + stats["rejected"] == TEACHER_LIMIT and stats["accepted"] > 0
    assert list((tmp_path / "teacher" / "accepted").glob("*.parquet"))

    meta = json.loads((tmp_path / "export" / "sbs_meta.json").read_text())
    assert meta["method"] == "multitask" and meta["dataset"] == "svamp" and meta["metrics"]["step"] == 3

    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["split"] == "test" and ev["n"] == 8 and 0 <= ev["correct"] <= 8
    assert ev["accuracy"] == pytest.approx(ev["correct"] / 8) and len(ev["predictions"]) == 8


def test_pipeline_stops_at_the_first_failing_stage(head, tmp_path):
    args = tiny_pipeline_args(tmp_path)
    args[args.index(f"limit={TEACHER_LIMIT}")] = "sampling.k=0"  # TeacherConfig rejects k < 1
    r = run_pipeline(head, *args, timeout=300)
    assert r.returncode != 0
    assert "stage 'rationales' failed" in r.stderr and "sampling.k" in r.stdout + r.stderr
    assert "== run_pipeline: train" not in r.stderr, "a later stage started after a failure"
    assert not (tmp_path / "export").exists() and not (tmp_path / "eval.json").exists()
