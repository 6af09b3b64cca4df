"""The Ray Serve application: one FastAPI ingress in front of one batched deployment per student.

    HTTP --> Ingress (validate, pick the student by dataset) --> StudentReplica[dataset] (@serve.batch)

The ingress checks every example before any model work (fields via the dataset layer, length
via the student's own tokenizer) so a client error is a 4xx naming the field and never reaches
a replica. Each example is one call to its student; `@serve.batch` regroups calls from all
concurrent requests into one `generate()`. Why one deployment per student rather than model
multiplexing: docs/serving.md.

`build_app(args)` is the import path for Serve config files (`serve run configs/serve/x.yaml`).
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods
# (with string annotations under @serve.ingress the request body is taken for a query param).
import asyncio
import functools
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from sbs.config import ConfigError, load_config
from sbs.datasets import InputError, get_dataset
from sbs.datasets.base import text_problem
from sbs.export import META_FILE, ExportMeta
from sbs.serve.config import ServeConfig, StudentSpec
from sbs.student.causal import marker_ids
from sbs.student.vocab import outside
from sbs.serve.schemas import (ClientError, PredictRequest, PredictResponse, StudentInfo, error_body,
                               pydantic_problems)

# A token is rarely longer than this many characters: texts beyond max_input_length x this are
# rejected before tokenizing, so a multi-megabyte string costs nothing.
MAX_CHARS_PER_TOKEN = 64

api = FastAPI(title="sbs student", description="Label-only answers from Distilling Step-by-Step students")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = pydantic_problems(list(exc.errors()))
    # Unparseable JSON is a malformed request (400); well-formed JSON of the wrong shape is 422.
    status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
    return JSONResponse(error_body(problems), status_code=status)


@api.exception_handler(ClientError)
async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def default_version(export_dir: str | Path) -> str:
    return hashlib.sha256((Path(export_dir) / META_FILE).read_bytes()).hexdigest()[:12]


class InputGate:
    """Everything the ingress needs to check one student's inputs: no model weights."""

    def __init__(self, spec: StudentSpec):
        from transformers import AutoTokenizer

        self.meta = ExportMeta.read(spec.export_dir)
        self.dataset = get_dataset(spec.dataset)
        self.tok = AutoTokenizer.from_pretrained(spec.export_dir)
        self.name = spec.name or f"{spec.dataset}-{self.meta.method}"
        self.version = spec.version or default_version(spec.export_dir)

    def info(self) -> StudentInfo:
        m = self.meta
        return StudentInfo(name=self.name, version=self.version, dataset=m.dataset, method=m.method,
                           model_kind=m.model_kind, base_model=m.base_model, label_space=m.label_space,
                           input_fields=m.input_fields or list(self.dataset.input_fields),
                           can_explain=m.can_explain, max_input_tokens=m.max_input_length,
                           max_label_tokens=m.max_label_length, sbs_version=m.sbs_version)

    def to_text(self, field: str, example: Any) -> str:
        """The student input text of one example, or a ClientError naming `field`."""
        fields = list(self.dataset.input_fields)
        if isinstance(example, str):
            if not example.strip():
                raise ClientError(422, "is an empty string; send student input text or an object "
                                  f"with fields {fields}", field)
            why = text_problem(example)
            if why:
                raise ClientError(422, why, field)
            return example
        if isinstance(example, dict):
            try:
                return self.dataset.format_input(example, self.meta.choice_layout)
            except InputError as e:
                raise ClientError(422, str(e), field) from None
        raise ClientError(422, f"must be an object with fields {fields} or a string of student input text, "
                          f"got {type(example).__name__}", field)

    def candidates(self, field: str, example: Any) -> list[str]:
        """The answers decoding=choices ranks for one example, or a ClientError naming `field`."""
        try:
            cands = self.dataset.candidates(example if isinstance(example, dict) else {})
        except KeyError:
            cands = None
        if not cands:
            fields = list(self.dataset.input_fields)
            raise ClientError(422, f"decoding=choices needs a closed answer set: a label space, or choices "
                              f"sent as an example object with fields {fields}; {self.dataset.name} gives none here",
                              field)
        for j, c in enumerate(cands):
            bad = outside(self.tok, self.meta, c)
            if bad:  # its likelihood is exactly 0 (-inf), which neither ranks nor travels in JSON
                where = f"{field}.choices[{j}]" if self.dataset.lists_choices else field
                raise ClientError(422, f"candidate {c!r} needs tokens this student never produces (ids {bad[:8]}): "
                                  "it was trained with the task's output vocabulary (model.output_vocab=task); "
                                  "send answers in the task's words, or serve a student trained with "
                                  "output_vocab=full", where)
        return cands

    def check_length(self, field: str, text: str, explain: bool) -> None:
        limit = self.meta.max_input_length
        if len(text) > limit * MAX_CHARS_PER_TOKEN:
            raise ClientError(422, f"is {len(text)} characters, far over this model's limit of {limit} tokens", field)
        m = self.meta
        if m.model_kind == "causal":  # the input is a prefix; the task marker follows it
            n = len(self.tok(text, add_special_tokens=True)["input_ids"]) + len(
                marker_ids(self.tok, m.causal_explain_separator if explain and m.method == "multitask"
                           else m.causal_separator))
        else:
            prompts = [m.label_input(text)] + ([m.explain_input(text)] if explain and m.method == "multitask" else [])
            n = max(len(ids) for ids in self.tok(prompts, add_special_tokens=True)["input_ids"])
        if n > limit:
            raise ClientError(422, f"is {n} tokens (with the task prefix); this model's limit is {limit} tokens "
                              "(max_input_length)", field)


def load_student(export_dir: str, device: str, dtype: str, num_threads: int) -> Any:
    """The replica's model: `dtype` is a torch dtype name (bfloat16 on GPU, float32 on CPU)."""
    import torch

    from sbs.predict import Student

    torch.set_num_threads(num_threads)  # own the CPUs Ray gave this replica, no more
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda but this replica sees no CUDA GPU (check ray_actor_options.num_gpus)")
    return Student.load(export_dir, device=device, dtype=getattr(torch, dtype))


# Defined above the deployments: @serve.ingress pickles the Ingress class (and the globals its
# methods use) when the class is defined, so anything used in a route must already exist.
def _deployment_name(dataset: str) -> str:
    return "student-" + re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset).stem if dataset.endswith((".yaml", ".yml"))
                               else dataset)


@serve.deployment
class StudentReplica:
    """One exported student; examples from concurrent requests are batched into one generate()."""

    def __init__(self, export_dir: str, device: str, dtype: str, batching: dict[str, Any], num_threads: int):
        self.student = load_student(export_dir, device, dtype, num_threads)
        for method in (self.label, self.explain, self.choose):
            method.set_max_batch_size(batching["max_batch_size"])
            method.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        self.batch_sizes: list[int] = []

    async def _run(self, texts: list[str], explain: bool) -> list[dict[str, Any]]:
        # generate() runs on the replica's event loop on purpose: while it computes, new calls
        # wait outside the batch queue and the next batch takes all of them at once. Run in a
        # worker thread instead, the free loop cut a new batch every batch_wait_timeout_s from
        # the few calls that had arrived (mean batch 1.6 vs 4.0 at 8 clients, docs/serving.md).
        # It also keeps label and explain batches from competing for the replica's CPUs.
        self.batch_sizes.append(len(texts))
        preds = self.student.predict(texts, explain, len(texts))
        return [{"label": p.label, "rationale": p.rationale} for p in preds]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def label(self, texts: list[str]) -> list[dict[str, Any]]:
        return await self._run(texts, explain=False)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def explain(self, texts: list[str]) -> list[dict[str, Any]]:
        return await self._run(texts, explain=True)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def choose(self, items: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
        """decoding=choices: one scoring pass ranks every candidate of every example in the batch."""
        self.batch_sizes.append(len(items))
        preds = self.student.predict([t for t, _ in items], False, len(items), candidates=[c for _, c in items])
        return [{"label": p.label, "rationale": None, "scores": p.scores} for p in preds]

    def stats(self) -> dict[str, Any]:
        n = len(self.batch_sizes)
        return {"batches": n, "examples": sum(self.batch_sizes),
                "mean_batch_size": sum(self.batch_sizes) / n if n else 0.0,
                "max_batch_size": max(self.batch_sizes, default=0)}


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, cfg: dict[str, Any], students: dict[str, DeploymentHandle]):
        self.cfg = ServeConfig.model_validate(cfg)
        self.handles = students
        self.gates = {s.dataset: InputGate(s) for s in self.cfg.students}

    def _gate(self, dataset: str | None) -> tuple[str, InputGate]:
        known = sorted(self.gates)
        if dataset is None:
            if len(known) == 1:
                return known[0], self.gates[known[0]]
            raise ClientError(422, f"required when several students are served; choose one of {known}", "dataset")
        if dataset not in self.gates:
            raise ClientError(404, f"no student serves dataset {dataset!r}; served datasets: {known}", "dataset")
        return dataset, self.gates[dataset]

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        # Ask Serve's controller rather than ping the replicas: a replica busy with a long explain
        # batch is healthy but would not answer a ping until the batch ends.
        app = (await asyncio.to_thread(serve.status)).applications.get(serve.get_replica_context().app_name)
        deps = app.deployments if app else {}
        bad, idle = [], []
        for ds in sorted(self.gates):
            d = deps.get(_deployment_name(ds))
            status = getattr(d.status, "value", d.status) if d else "not deployed"
            if d is not None and not d.replica_states.get("RUNNING", 0):
                # Scaled to zero on purpose (autoscaling min_replicas: 0): healthy, and the next
                # request starts a replica. Anything else without a running replica is an outage.
                if status == "HEALTHY" and not any(d.replica_states.values()):
                    idle.append(ds)
                    continue
            if d is None or not d.replica_states.get("RUNNING", 0):
                bad.append(f"{ds}: {status}, no running replica")
        body = {"status": "ok" if not bad else "unhealthy", "students": sorted(self.gates), "failing": bad,
                **({"scaled_to_zero": idle} if idle else {})}
        return JSONResponse(body, status_code=200 if not bad else 503)

    @api.get("/v1/model")
    async def model(self, dataset: str | None = None) -> dict[str, Any]:
        if dataset is not None:
            return self._gate(dataset)[1].info().model_dump()
        return {"students": [g.info().model_dump() for _, g in sorted(self.gates.items())],
                "max_items_per_request": self.cfg.max_items_per_request}

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        """Batch sizes seen by one replica of each student (the load benchmark reads this)."""
        return {ds: await h.stats.remote() for ds, h in self.handles.items()}

    async def _answers(self, dataset: str, calls: list[Callable[[], Any]]) -> list[Any]:
        """The replicas' answers, or a 503 with the reason: none within request_timeout_s (no replica
        running, e.g. its node is gone, or all overloaded), or the replica was lost twice. Serve
        would otherwise queue a request for a replica that may never come back."""
        timeout = self.cfg.request_timeout_s

        async def once_more_if_lost(call: Callable[[], Any]) -> Any:
            try:
                return await call()
            except RayActorError:
                # Its replica died or is unreachable (e.g. its node is gone). A prediction has no
                # side effects, so ask again: Serve routes the retry to a replica that is alive.
                return await call()

        try:
            return await asyncio.wait_for(asyncio.gather(*map(once_more_if_lost, calls)), timeout=timeout)
        except asyncio.TimeoutError:  # wait_for cancelled the pending calls, and Serve their requests
            raise ClientError(503, f"no replica of student {dataset!r} answered within {timeout:g} s "
                              "(request_timeout_s): none is running or all are busy; retry later", "dataset") from None
        except RayActorError as e:  # includes ActorDiedError / ActorUnavailableError
            raise ClientError(503, f"the replica of student {dataset!r} answering this request was lost, "
                              f"twice ({type(e).__name__}); retry", "dataset") from None

    @api.post("/v1/predict")
    async def predict(self, req: PredictRequest) -> PredictResponse:
        dataset, gate = self._gate(req.dataset)
        examples = req.examples()
        limit = self.cfg.max_items_per_request
        if len(examples) > limit:
            raise ClientError(422, f"has {len(examples)} examples; at most {limit} per request "
                              "(max_items_per_request)", "inputs")
        explain = req.explain and gate.meta.can_explain
        choices = req.decoding == "choices"
        texts, cands = [], []
        for field, ex in examples:
            text = gate.to_text(field, ex)
            gate.check_length(field, text, explain and not choices)
            texts.append(text)
            if choices:
                cands.append(gate.candidates(field, ex))
        handle = self.handles[dataset]
        if choices:
            calls = [functools.partial(handle.choose.remote, (t, c)) for t, c in zip(texts, cands)]
        else:
            call = handle.explain if explain else handle.label
            calls = [functools.partial(call.remote, t) for t in texts]
        preds = await self._answers(dataset, calls)
        note = None
        if req.explain and not explain:
            note = (f"student {gate.name!r} was trained with method {gate.meta.method!r}, which has no rationale "
                    "task, so it cannot explain; only multitask and single_task students can. "
                    "Labels are returned without rationales.")
        return PredictResponse(dataset=dataset, model=gate.name, version=gate.version, method=gate.meta.method,
                               predictions=preds, explain_unavailable=note)


# --- building the application -----------------------------------------------------------------

def config_from_args(args: dict[str, Any] | None) -> ServeConfig:
    """Builder args: `config: path.yaml` and/or inline ServeConfig fields, plus `overrides: [a.b=c]`."""
    args = dict(args or {})
    path = args.pop("config", None)
    overrides = args.pop("overrides", None) or []
    if isinstance(overrides, str):
        overrides = [overrides]
    return load_config(ServeConfig, path, list(overrides), inline=args)


def check_students(cfg: ServeConfig) -> None:
    """Fail at deploy time, on the driver, with the student and file named (not in a replica log)."""
    for i, s in enumerate(cfg.students):
        where = f"students[{i}] ({s.dataset})"
        try:
            meta = ExportMeta.read(s.export_dir)
            get_dataset(s.dataset)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise ConfigError(f"{where}: {e}") from None
        if meta.dataset != s.dataset:
            raise ConfigError(f"{where}: export_dir {s.export_dir} holds a student for dataset "
                              f"{meta.dataset!r}, not {s.dataset!r}")


def app_from_config(cfg: ServeConfig, base_dir: str | Path = ".") -> serve.Application:
    cfg = cfg.resolve_paths(base_dir)
    check_students(cfg)
    acts = cfg.ray_actor_options
    opts: dict[str, Any] = {"max_ongoing_requests": cfg.ongoing_requests(),
                            "ray_actor_options": {"num_cpus": acts.num_cpus, "num_gpus": acts.num_gpus,
                                                  **({"resources": acts.resources} if acts.resources else {})}}
    if cfg.autoscaling_config is not None:
        opts["autoscaling_config"] = cfg.autoscaling_config.model_dump()
    else:
        opts["num_replicas"] = cfg.num_replicas
    threads = max(1, int(acts.num_cpus))
    students = {s.dataset: StudentReplica.options(name=_deployment_name(s.dataset), **opts).bind(
        s.export_dir, cfg.device, cfg.torch_dtype_name(), cfg.batching.model_dump(), threads)
        for s in cfg.students}
    # The ingress only validates and fans out; it must admit many concurrent requests, or it
    # (not the student's batch size) would cap how much the student can batch.
    ingress = Ingress.options(num_replicas=cfg.ingress.num_replicas, max_ongoing_requests=1000,
                              ray_actor_options={"num_cpus": cfg.ingress.num_cpus,
                                                 **({"resources": cfg.ingress.resources} if cfg.ingress.resources else {})})
    return ingress.bind(cfg.model_dump(mode="json"), students)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve config import path: `import_path: sbs.serve.app:build_app` with `args: {config: ...}`."""
    return app_from_config(config_from_args(args))


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Poll /healthz until it answers 200 (deploy returns before replicas finish loading)."""
    import requests

    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        try:
            r = requests.get(url.rstrip("/") + "/healthz", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz not ready after {timeout_s:.0f} s: {last}")
