"""The one interface every teacher backend implements, and the registry that names them.

A backend turns a Ray Dataset of prompt rows into the same rows with the teacher's text added.
It must never drop or duplicate a row: a failed generation is a row with `text=""` and `error`
set, so the pipeline can put it in the rejects table with a reason and the counts add up.

Input rows: id (str), sample (int, 0..k-1), prompt (str: plain-completion rendering),
messages (str: JSON list of {role, content}: chat rendering), plus pass-through columns.
Output rows: the same columns plus text (str), error (str | None), tokens_in (int), tokens_out (int).
Only the rendering the backend wants (`wants_chat`) is filled; the other column holds "".

The pipeline builds the backend with `cfg.sampling.stop` already resolved to a list (the dataset's
exemplar markers and a blank line when the YAML left it null), and `cfg.sampling.seed + row["sample"]`
is the seed a backend should use for a row when it can seed per request.

The registry's names are also `TeacherConfig.backend`'s Literal (config.py never imports this
module, so the two are checked against each other by a test).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    import ray.data

    from sbs.teacher.config import TeacherConfig

# Columns a backend adds to every row, with their types (`with_outputs` appends them).
OUTPUT_COLUMNS = {"text": pa.string(), "error": pa.string(), "tokens_in": pa.int64(), "tokens_out": pa.int64()}

# One row's result: (text, tokens_in, tokens_out), or the error message of a failed row.
Result = tuple[str, int, int] | str

# name -> "module:Class", imported only when chosen (vllm/transformers are heavy or absent).
BACKENDS: dict[str, str] = {
    "hf": "sbs.teacher.backends.hf:HfBackend",
    "openai": "sbs.teacher.backends.openai:OpenAIBackend",
    "replay": "sbs.teacher.backends.replay:ReplayBackend",
    "vllm": "sbs.teacher.backends.vllm:VllmBackend",
}


class TeacherBackend(ABC):
    """A teacher LLM behind Ray Data. Subclasses set `name` and implement `generate`."""

    name: ClassVar[str]
    wants_chat: bool = False  # True: the backend reads row["messages"]; False: row["prompt"]
    # False only for backends that ignore the prompt (replay): then the prompt's exemplars are not
    # in the teacher's context, so they need not be held out of the outputs.
    uses_prompt: ClassVar[bool] = True

    def __init__(self, cfg: "TeacherConfig"):
        self.cfg = cfg

    @abstractmethod
    def generate(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        """Input rows: id (str), sample (int, 0..k-1), prompt (str, completion rendering),
        messages (str: JSON list of {role, content}), plus pass-through columns.
        Output rows: the same columns plus text (str; "" on failure), error (str or None),
        tokens_in (int), tokens_out (int). Never drops or duplicates a row; failures are rows with error set."""

    def describe(self) -> str:
        """`backend/model` string recorded in every accepted row's `teacher_model` column."""
        return self.name


def map_with_actor_pool(ds: "ray.data.Dataset", udf_cls: type, cfg: "TeacherConfig", *, num_gpus: float = 0.0,
                        **kwargs) -> "ray.data.Dataset":
    """`map_batches` on a fixed actor pool with bounded fault tolerance.

    Ray Data's default for actor pools is infinite actor restarts AND infinite task retries, so a
    row that kills its actor every time would loop forever. We keep infinite restarts (a bounded
    restart count leaves a permanently dead actor in the pool and the job hangs: measured) and
    bound task retries by `max_task_retries`; a block that still fails is dropped (the pipeline
    sets `max_errored_blocks=-1`), noticed by the driver and its rows rerun one per block.
    Ray 2.60 has no named parameter for these actor options yet, so they go through
    `**ray_remote_args`, whose deprecation warning we silence here only.
    """
    import warnings

    import ray.data

    # batch_size 1 is the driver's isolation rerun: one task in flight per actor, so an actor that
    # dies takes only its own row with it (in-flight neighbours would burn their retries too).
    in_flight = 1 if cfg.batch_size == 1 else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return ds.map_batches(udf_cls, batch_format="pyarrow", batch_size=cfg.batch_size,
                              compute=ray.data.ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=in_flight),
                              num_cpus=cfg.num_cpus_per_actor, num_gpus=num_gpus or None,
                              **({"resources": dict(cfg.resources)} if cfg.resources else {}),
                              max_restarts=-1, max_task_retries=cfg.max_task_retries, **kwargs)


def with_outputs(batch: pa.Table, results: list[Result]) -> pa.Table:
    """`batch` plus OUTPUT_COLUMNS, one result per row; a failed row gets text "", its error, 0 tokens."""
    ok = [isinstance(r, tuple) for r in results]
    values = {"text": [r[0] if o else "" for r, o in zip(results, ok)],
              "error": [None if o else r for r, o in zip(results, ok)],
              "tokens_in": [r[1] if o else 0 for r, o in zip(results, ok)],
              "tokens_out": [r[2] if o else 0 for r, o in zip(results, ok)]}
    for name, typ in OUTPUT_COLUMNS.items():
        batch = batch.append_column(name, pa.array(values[name], typ))
    return batch


def resolve_chat(cfg: "TeacherConfig", backend_default: bool) -> bool:
    """`prompt.chat: auto` means what the backend prefers; true/false override it."""
    return backend_default if cfg.prompt.chat == "auto" else bool(cfg.prompt.chat)


def backend_class(name: str) -> type[TeacherBackend]:
    if name not in BACKENDS:
        raise KeyError(f"teacher.backend: unknown {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"teacher backend {name!r} is not available here ({module_name}: {e})") from e
    return getattr(module, cls_name)


def make_backend(cfg: "TeacherConfig") -> TeacherBackend:
    return backend_class(cfg.backend)(cfg)
