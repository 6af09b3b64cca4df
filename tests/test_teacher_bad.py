"""Bad teacher behaviour is survived: empty, garbage, truncated, 100k-character and missing
outputs, and a teacher actor that dies (os._exit) on one row every time. Every input ends
accepted or rejected with a reason, and the counts add up."""
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from ray.cloudpickle import register_pickle_by_value

from sbs.config import load_config
from sbs.teacher.backends.base import map_with_actor_pool
from sbs.teacher.backends.replay import ReplayBackend, replay_batch
from sbs.teacher.config import TeacherConfig
from sbs.teacher.pipeline import execute

DIE = "<<die>>"
CASES = [  # id, recorded teacher text, expected reason (None = accepted)
    ("ok-1", "5 and 3 more make 8. The answer is (5 + 3).", None),
    ("empty", "", "empty_output"),
    ("blank", "  \n\t ", "empty_output"),
    ("garbage", "\x00\x01 ###!!! ΩΩΩ }{ <|endoftext|>", "no_answer_marker"),
    ("truncated", "5 and 3 more make 8. So the ans", "no_answer_marker"),
    ("huge", "x " * 50_000 + "The answer is (5 + 3).", "too_long"),
    ("missing", None, "teacher_error"),
    ("dies", DIE, "teacher_crashed"),
    ("not-math", "Because. The answer is (five plus three).", "unparseable_equation"),
    ("ok-2", "8 is 5 + 3. The answer is 5 + 3.", None),
]


class DyingReplay(ReplayBackend):
    """Replay in an actor pool whose actor process exits (no exception, no cleanup) on a row."""

    def generate(self, ds):
        return map_with_actor_pool(ds, _DyingUdf, self.cfg)


class _DyingUdf:
    def __call__(self, batch):
        if DIE in batch.column("teacher").to_pylist():
            os._exit(1)
        return replay_batch(batch)


register_pickle_by_value(sys.modules[__name__])  # the Ray workers cannot import this test module


def test_bad_outputs_and_a_dying_actor_are_all_accounted_for(ray_local, tmp_path):
    src = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i, "problem": f"Problem {i}: 5 plus 3?", "label": "( 5.0 + 3.0 )",
                                          "teacher": t} for i, t, _ in CASES]), src)
    cfg = load_config(TeacherConfig, None, [
        f"out={tmp_path / 'o'}", "dataset=svamp", "source=file", f"input_path={src}", "batch_size=2",
        "shard_size=4", "num_actors=1", "max_task_retries=1", "progress=false"])
    stats = execute(cfg, backend=DyingReplay(cfg))
    acc = {r["id"] for r in pq.read_table(tmp_path / "o" / "accepted").to_pylist()}
    rej = {r["id"]: r for r in pq.read_table(tmp_path / "o" / "rejects").to_pylist()}
    assert len(acc) + len(rej) == len(CASES) and not acc & set(rej)
    for i, _, reason in CASES:
        if reason is None:
            assert i in acc, i
        else:
            assert rej[i]["reason"] == reason, (i, rej[i]["reason"], rej[i]["detail"][:200])
    assert "again alone" in rej["dies"]["detail"]
    assert len(rej["huge"]["raw"]) == 20_000  # raw text is capped, the row is not lost
    assert stats["examples_in"] == len(CASES) == stats["accepted"] + stats["rejected"] and stats["counts_add_up"]
    assert sum(stats["rejected_by_reason"].values()) == stats["rejected"]
