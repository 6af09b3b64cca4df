"""`sbs bench`: one JSON from every benchmark script; a partial run (--only) updates it in place."""
from __future__ import annotations

import argparse
import json
import sys

from sbs.experiments import bench

SCRIPT = """import json, sys
out = sys.argv[sys.argv.index("--json") + 1]
json.dump({"ratio": float(sys.argv[-1])}, open(out, "w"))
"""


def test_partial_run_keeps_the_other_benchmarks_and_names_their_machine(tmp_path, monkeypatch):
    script = tmp_path / "fake_bench.py"
    script.write_text(SCRIPT)
    monkeypatch.setattr(bench, "BENCHMARKS", {"one": (str(script), ["1.5"], ["0.5"]),
                                              "two": (str(script), ["2.5"], ["0.5"])})
    out = tmp_path / "bench.json"
    ns = argparse.Namespace(out=str(out), only=None, quick=False, timeout=60)
    assert bench.run(ns) == 0
    first = json.loads(out.read_text())
    assert {k: v["results"]["ratio"] for k, v in first["benchmarks"].items()} == {"one": 1.5, "two": 2.5}
    assert (tmp_path / "bench.parts" / "two.json").is_file()  # a resumable benchmark's own file stays

    first["machine"] = {"cpu_model": "another machine"}
    out.write_text(json.dumps(first))
    assert bench.run(argparse.Namespace(out=str(out), only=["two"], quick=True, timeout=60)) == 0
    second = json.loads(out.read_text())
    assert second["benchmarks"]["two"]["results"]["ratio"] == 0.5 and "machine" not in second["benchmarks"]["two"]
    assert second["benchmarks"]["one"]["results"]["ratio"] == 1.5
    assert second["benchmarks"]["one"]["machine"] == {"cpu_model": "another machine"}
    assert second["machine"]["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"

