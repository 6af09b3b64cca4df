"""`replay`: the recorded teacher continuation of each example (the paper's PaLM 540B outputs,
shipped as Example.teacher) played through the same pipeline, so the paper's exact teacher data
is parsed, voted and filtered like a live teacher's. A plain Ray Data task (no model to hold)."""
from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from sbs.teacher.backends.base import TeacherBackend, resolve_chat


def replay_batch(batch: pa.Table) -> pa.Table:
    recorded = batch.column("teacher").to_pylist()
    text = [t if isinstance(t, str) else "" for t in recorded]
    error = [None if isinstance(t, str) else "replay: no recorded teacher output for this example" for t in recorded]
    zeros = pa.array([0] * batch.num_rows, pa.int64())
    return (batch.append_column("text", pa.array(text, pa.string())).append_column("error", pa.array(error, pa.string()))
            .append_column("tokens_in", zeros).append_column("tokens_out", zeros))


class ReplayBackend(TeacherBackend):
    """Token counts are 0: a recording has no tokenizer."""

    name: ClassVar[str] = "replay"
    uses_prompt: ClassVar[bool] = False  # PaLM saw the paper's prompt, not ours: no exemplar to hold out

    def __init__(self, cfg):
        super().__init__(cfg)
        self.wants_chat = resolve_chat(cfg, False)

    def generate(self, ds):
        return ds.map_batches(replay_batch, batch_format="pyarrow", batch_size=None, num_cpus=0.25)

    def describe(self) -> str:
        return "replay/palm-540b-recorded"
