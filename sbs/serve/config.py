"""`ServeConfig`: what `sbs serve` (and the Serve YAML's app builder) deploys.

One student per dataset; the request's `dataset` picks the student. Batching, replicas or
autoscaling, and per-replica CPUs/GPUs apply to every student deployment. The HTTP server binds
to 127.0.0.1 unless `host` says otherwise: exposing the service is a deliberate choice.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sbs.config import Config, CustomResources

LOOPBACK = "127.0.0.1"


class StudentSpec(Config):
    dataset: str = Field(..., min_length=1, description="dataset this student answers (selects it in requests)")
    export_dir: str = Field(..., min_length=1, description="exported student directory (weights + sbs_meta.json)")
    name: str = Field("", description="model name shown in /v1/model and responses; default <dataset>-<method>")
    version: str = Field("", description="model version shown in /v1/model; default: hash of sbs_meta.json")


class BatchingConfig(Config):
    max_batch_size: int = Field(16, ge=1, le=1024,
                                description="most examples one generate() call takes (1 = no dynamic batching)")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0,
                                        description="how long a partial batch waits for more examples (seconds)")


class AutoscalingConfig(Config):
    min_replicas: int = Field(1, ge=0, le=1000, description="fewest replicas per student (0 = scale to zero)")
    max_replicas: int = Field(2, ge=1, le=1000, description="most replicas per student")
    target_ongoing_requests: float = Field(8.0, gt=0, le=10000,
                                           description="ongoing requests per replica that autoscaling aims at")
    upscale_delay_s: float = Field(30.0, ge=0, le=3600, description="load must stay above target this long "
                                   "before replicas are added (Serve's default 30 s)")
    downscale_delay_s: float = Field(600.0, ge=0, le=86400, description="load must stay below target this long "
                                     "before replicas are removed (Serve's default 600 s)")
    look_back_period_s: float = Field(30.0, gt=0, le=3600, description="window the ongoing-request count is "
                                      "averaged over (Serve's default 30 s); replicas report it every "
                                      "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S (10 s)")

    @model_validator(mode="after")
    def _order(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self


class ActorOptions(Config):
    num_cpus: float = Field(1.0, ge=0, le=512, description="CPUs per student replica (also its torch threads)")
    num_gpus: float = Field(0.0, ge=0, le=16, description="GPUs per student replica (needs device: cuda)")
    resources: CustomResources = Field(default_factory=dict, description="custom Ray resources per replica, "
                                       "e.g. {serve: 1}: replicas land only on nodes that advertise them")


class IngressConfig(Config):
    num_replicas: int = Field(1, ge=1, le=100, description="replicas of the HTTP ingress (validation + routing)")
    resources: CustomResources = Field(default_factory=dict, description="custom Ray resources per ingress "
                                        "replica, e.g. {head: 1}: keep it off the nodes that may go away")
    num_cpus: float = Field(0.0, ge=0, le=64,
                            description="CPUs reserved per ingress replica (0: it only validates and routes, so it "
                            "never waits for CPUs the students hold)")


class ServeConfig(Config):
    host: str = Field(LOOPBACK, description="HTTP bind address; 127.0.0.1 = this machine only, 0.0.0.0 = exposed")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        "HeadOnly", description="where Serve runs HTTP proxies: HeadOnly (one entry point; also what several "
        "nodes on one machine need, as they share one address) or EveryNode (behind a load balancer)")
    app_name: str = Field("sbs", min_length=1, description="Serve application name")
    route_prefix: str = Field("/", description="URL prefix of the application (starts with '/')")
    students: list[StudentSpec] = Field(..., min_length=1, description="one exported student per dataset")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="dynamic batching (@serve.batch)")
    max_items_per_request: int = Field(64, ge=1, le=10000, description="most examples one POST may carry")
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="a request no replica answered within "
                                     "this long gets 503 (e.g. the student's node is gone) instead of waiting")
    max_ongoing_requests: int | None = Field(
        None, ge=1, le=100000,
        description="concurrent calls per student replica; default 2 x max_batch_size (Serve's default 5 caps a batch)")
    num_replicas: int | None = Field(1, ge=1, le=1000, description="fixed replicas per student (or autoscaling_config)")
    autoscaling_config: AutoscalingConfig | None = Field(None, description="autoscale replicas instead of num_replicas")
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions, description="resources per student replica")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="the HTTP ingress deployment")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where student replicas run the model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on cuda, float32 on cpu")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if v == "localhost":
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address; use 127.0.0.1 (local only) or 0.0.0.0 (exposed)") from None
        return v

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/', got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ServeConfig":
        seen: set[str] = set()
        for s in self.students:
            if s.dataset in seen:
                raise ValueError(f"students: dataset {s.dataset!r} appears twice; the dataset selects the student")
            seen.add(s.dataset)
        if self.autoscaling_config is not None and self.num_replicas not in (None, 1):
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        gpus = self.ray_actor_options.num_gpus
        if self.device == "cuda" and gpus <= 0:
            raise ValueError("device: cuda needs ray_actor_options.num_gpus > 0")
        if self.device == "cpu" and gpus > 0:
            raise ValueError("ray_actor_options.num_gpus > 0 reserves GPUs a device: cpu replica would not use")
        if self.device == "cpu" and self.dtype in ("bfloat16", "float16"):
            raise ValueError(f"dtype: {self.dtype} is for device: cuda; on cpu use float32 (or auto)")
        return self

    @property
    def is_exposed(self) -> bool:
        return self.host not in (LOOPBACK, "localhost", "::1")

    def ongoing_requests(self) -> int:
        # @serve.batch only sees the calls Serve lets into a replica: keep room for a full batch
        # being computed while the next one fills.
        return self.max_ongoing_requests or max(5, 2 * self.batching.max_batch_size)

    def torch_dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.device == "cuda" else "float32"

    def resolve_paths(self, base: str | Path) -> "ServeConfig":
        """Relative export_dirs are relative to `base` (the working directory of the deploy)."""
        out = self.model_copy(deep=True)
        for s in out.students:
            p = Path(s.export_dir)
            if not p.is_absolute():
                s.export_dir = str((Path(base) / p).resolve())
        return out
