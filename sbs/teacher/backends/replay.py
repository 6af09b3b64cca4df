"""`replay`: the recorded teacher continuation of each example (the paper's PaLM 540B outputs,
shipped as Example.teacher) played through the same pipeline, so the paper's exact teacher data
is parsed, voted and filtered like a live teacher's. A plain Ray Data task (no model to hold)."""
from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from sbs.teacher.backends.base import TeacherBackend, resolve_chat, with_outputs

# `teacher_model` of every row the recorded outputs produce (here and in sbs.student.recorded).
RECORDED_TEACHER = "replay/palm-540b-recorded"


def replay_batch(batch: pa.Table) -> pa.Table:
    recorded, missing = batch.column("teacher").to_pylist(), "replay: no recorded teacher output for this example"
    return with_outputs(batch, [(t, 0, 0) if isinstance(t, str) else missing for t in recorded])


class ReplayBackend(TeacherBackend):
    """Token counts are 0: a recording has no tokenizer."""

    name: ClassVar[str] = "replay"
    uses_prompt: ClassVar[bool] = False  # PaLM saw the paper's prompt, not ours: no exemplar to hold out

    def __init__(self, cfg):
        super().__init__(cfg)
        self.wants_chat = resolve_chat(cfg, False)

    def generate(self, ds):
        # tasks, not actors (nothing to load); `resources` still keeps them on teacher nodes
        return ds.map_batches(replay_batch, batch_format="pyarrow", batch_size=None, num_cpus=0.25,
                              **({"resources": dict(self.cfg.resources)} if self.cfg.resources else {}))

    def describe(self) -> str:
        return RECORDED_TEACHER
