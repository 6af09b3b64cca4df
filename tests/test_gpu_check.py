"""benchmarks/gpu_check.py, the prepared GPU check, at toy sizes on CPU: the code a GPU session runs
in one short call must not first fail there. Its figures on a GPU go to docs/capacity.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_part_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "0"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                        "--batch", "4", "--gen-batch", "2", "--steps", "2", "--warmup", "1", "--no-bf16",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1]) == rep
    st = rep["student_step_t5_base"]
    for task in ("standard", "multitask"):
        assert st[task]["median_s"] > 0 and st[task]["examples_per_s"] > 0
    assert st["multitask_over_standard"] > 1  # two passes cost more than one
    g = rep["generation_1b"]
    assert g["new_tokens"] == 32 and g["output_tokens_per_s"] > 0
    ds = rep["deepspeed_zero2"]
    assert ds["config"]["zero_optimization"]["stage"] == 2 and ds["standard"]["median_s"] > 0, ds
