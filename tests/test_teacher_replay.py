"""Replay teacher through the whole pipeline on SVAMP, output schema, and the self-consistency
vote. The recorded PaLM outputs must come out exactly as the dataset parser reads them."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbs.config import load_config
from sbs.datasets import get_dataset
from sbs.teacher import judge
from sbs.teacher.backends.replay import RECORDED_TEACHER
from sbs.teacher.config import TeacherConfig
from sbs.teacher.pipeline import execute
from sbs.teacher.shards import ACCEPTED_SCHEMA, REJECTS_SCHEMA


def _run(out, *overrides):
    return execute(load_config(TeacherConfig, None, [f"out={out}", "dataset=svamp", "split=train", "backend=replay",
                                                     "shard_size=300", "progress=false", *overrides]))


def test_replay_svamp_reproduces_the_parser_exactly(ray_local, tmp_path):
    ds = get_dataset("svamp")
    examples = ds.load("train")
    stats = _run(tmp_path / "r", "filter.gold_consistency=false")
    acc = pq.read_table(tmp_path / "r" / "accepted")
    rej = pq.read_table(tmp_path / "r" / "rejects")
    assert acc.schema.equals(ACCEPTED_SCHEMA) and rej.schema.equals(REJECTS_SCHEMA)
    acc_by = {r["id"]: r for r in acc.to_pylist()}
    rej_by = {r["id"]: r for r in rej.to_pylist()}
    assert len(acc_by) + len(rej_by) == len(examples) == acc.num_rows + rej.num_rows
    for ex in examples:
        res = ds.parse(ex.teacher, ex)
        if res.ok:
            row = acc_by[ex.id]
            assert (row["rationale"], row["label"]) == (res.rationale, res.label)
            assert row["rationales"] == [res.rationale] and (row["votes"], row["samples"]) == (1, 1)
            assert (row["input"], row["gold"], row["dataset"]) == (ex.input, ex.label, "svamp")
            assert row["teacher_model"] == RECORDED_TEACHER
        else:
            assert (rej_by[ex.id]["reason"], rej_by[ex.id]["detail"]) == (res.reason, res.detail)
            assert rej_by[ex.id]["raw"] == ex.teacher
    n_ok = sum(ds.parse(e.teacher, e).ok for e in examples)
    correct = sum(1 for e in examples if (r := ds.parse(e.teacher, e)).ok and ds.score(r.label, e))
    assert stats["accepted"] == n_ok and stats["counts_add_up"] and stats["examples_in"] == len(examples)
    assert stats["teacher_accuracy"] == pytest.approx(correct / len(examples))
    assert stats["exemplar_ids"] == []  # replay ignores our prompt: nothing to hold out
    run = (tmp_path / "r" / "run.json").read_text()
    # the output dir names its input portably: it resumes after the checkout or package moves
    assert json.loads(run)["input"] == "sbs/data/svamp/train.parquet", run
    assert str(Path(__file__).resolve().parents[1]) not in run


@pytest.mark.parametrize("change", ["sampling.temperature=0.7", "sampling.max_tokens=64", "sampling.seed=3",
                                    "sampling.top_p=0.9", "sampling.stop=[X]", "prompt.chat=true", "split=test",
                                    "shard_size=7", "filter.gold_consistency=false"])
def test_rerun_with_other_teacher_settings_is_refused_naming_the_field(ray_local, tmp_path, change):
    out = tmp_path / "fp"
    first = _run(out, "limit=20")
    with pytest.raises(FileExistsError, match=r"different settings \(.*" + change.split("=")[0].replace(".", r"\.")):
        _run(out, "limit=20", change)
    # nothing already written was touched, and the same settings still resume (nothing to redo)
    again = _run(out, "limit=20")
    assert again["accepted"] == first["accepted"] and again["examples_in"] == 20


def test_gold_filter_rejects_disagreements(ray_local, tmp_path):
    ds = get_dataset("svamp")
    examples = ds.load("train", limit=300)
    stats = _run(tmp_path / "g", "limit=300")
    acc = {r["id"] for r in pq.read_table(tmp_path / "g" / "accepted").to_pylist()}
    rej = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "g" / "rejects").to_pylist()}
    for ex in examples:
        res = ds.parse(ex.teacher, ex)
        if res.ok and ds.score(res.label, ex):
            assert ex.id in acc
        elif res.ok:
            assert rej[ex.id] == judge.GOLD_MISMATCH
    assert stats["rejected_by_reason"][judge.GOLD_MISMATCH] == sum(v == judge.GOLD_MISMATCH for v in rej.values())
    assert stats["accepted"] + stats["rejected"] == 300


def _samples(ds_name, texts, gold):
    ds = get_dataset(ds_name)
    rows = [{"id": "x", "sample": i, "shard": 0, "shard_expected": len(texts), "shard_exemplars": "[]",
             "input": "Premise: a\nHypothesis: b", "gold": gold, "text": t, "error": None if t else "HTTP 500",
             "tokens_in": 1, "tokens_out": 1, "fields": json.dumps({"premise": "a", "hypothesis": "b"})}
            for i, t in enumerate(texts)]
    return judge.parse_batch(pa.Table.from_pylist(rows), ds).to_pylist()


def test_majority_vote_keeps_agreeing_rationales():
    s = _samples("esnli", ["r0\nAnswer: neutral", "r1\nAnswer: entailment", "r2\nAnswer: neutral", ""], "neutral")
    ok, row, right = judge.decide(s, "esnli", "t", gold_filter=True)
    assert ok and right and row["label"] == "neutral" and row["rationales"] == ["r0", "r2"]
    assert (row["votes"], row["samples"], row["rationale"]) == (2, 4, "r0")
    # the majority disagrees with gold -> rejected with the vote in the detail
    ok, row, right = judge.decide(
        _samples("esnli", ["a\nAnswer: neutral", "b\nAnswer: neutral", "c\nAnswer: entailment"], "entailment"),
        "esnli", "t", gold_filter=True)
    assert not ok and row["reason"] == judge.GOLD_MISMATCH and "2/3 votes" in row["detail"] and right is False
    assert json.loads(row["raw"]) == ["a\nAnswer: neutral", "b\nAnswer: neutral", "c\nAnswer: entailment"]


def test_vote_ties_go_to_the_earliest_sample_and_failures_to_the_commonest_reason():
    s = _samples("esnli", ["x\nAnswer: contradiction", "y\nAnswer: neutral"], None)
    ok, row, right = judge.decide(s, "esnli", "t", gold_filter=True)
    assert ok and row["label"] == "contradiction" and right is None  # no gold: nothing to filter on
    s = _samples("esnli", ["no marker", "", "still none"], "neutral")
    ok, row, _ = judge.decide(s, "esnli", "t", gold_filter=True)
    assert not ok and row["reason"] == "no_answer_marker"
    ok, row, _ = judge.decide(_samples("esnli", ["", ""], "neutral"), "esnli", "t", gold_filter=True)
    assert not ok and row["reason"] == judge.TEACHER_ERROR and row["detail"] == "HTTP 500"
    ok, row, _ = judge.decide(_samples("svamp", ["x. The answer is (84 / 2).", "y. The answer is 42."], "( 84 / 2 )"),
                              "svamp", "t", gold_filter=True)
    assert ok and row["votes"] == 2  # equal values vote together


def test_hub_source_reads_a_local_mirror_in_the_hubs_format(ray_local, tmp_path):
    """source=hub snapshots the hub rows (here a local JSON-lines mirror via hub_data_files) once,
    with the hub's ids; replay has no recording for them, so each is a teacher_error reject."""
    rows = [{"ID": f"chal-{i}", "Body": f"He has {i} apples.", "Question": "How many?",
             "Equation": f"( {i}.0 + 1.0 )", "Answer": i + 1.0, "Type": "Addition"} for i in range(5)]
    mirror = tmp_path / "svamp_train.jsonl"
    mirror.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "hub"
    stats = _run(out, "source=hub", f"hub_data_files={{train: {mirror}}}")
    rej = sorted(pq.read_table(out / "rejects").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rej] == [f"chal-{i}" for i in range(5)] and stats["accepted"] == 0
    assert {r["reason"] for r in rej} == {judge.TEACHER_ERROR} and rej[0]["input"] == "He has 0 apples.\nHow many?"
    assert stats["examples_in"] == 5 and stats["counts_add_up"]
    assert pq.read_table(out / "_input" / "examples.parquet").num_rows == 5
    other = tmp_path / "other.jsonl"
    other.write_text(mirror.read_text())
    with pytest.raises(FileExistsError, match=r"different settings \(hub_data_files"):
        _run(out, "source=hub", f"hub_data_files={{train: {other}}}")
