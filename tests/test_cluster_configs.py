"""Every cluster file is checked before a user applies it: Ray's own schemas plus sbs coherence.

- cluster/*.yaml (Ray cluster launcher): the autoscaler's JSON schema shipped in the ray package,
  then `prepare_config` + `validate_config` (what `ray up` runs before it calls the cloud); every
  node type has explicit resources, min <= max; the teacher type's GPUs are a multiple of the
  referenced teacher config's tensor x pipeline parallel size; the trainer type holds the workers.
- cluster/kuberay/*.yaml: only fields of the KubeRay v1 CRDs (allow-lists below, written from
  ray-operator/apis/ray/v1/*_types.go and the Kubernetes core/v1 API), every cluster spec goes
  through Ray's own KubeRay-CR -> autoscaler translation, entry points and configs exist.
- Serve configs (configs/serve, configs/cluster, the RayService): Ray Serve's ServeDeploySchema,
  then the sbs app builder's own ServeConfig.
"""
from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = sorted((ROOT / "cluster").glob("*.yaml"))
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
IMAGE_ROOT = "/home/ray/sbs"  # WORKDIR of cluster/Dockerfile: the repository inside the image
# Which typed config each job entry point reads (module, class).
JOB_CONFIGS = {
    "generate_rationales.py": ("sbs.teacher.config", "TeacherConfig"),
    "train_student.py": ("sbs.student.config", "StudentTrainConfig"),
}


def load_yaml(p: Path) -> dict:
    return yaml.safe_load(p.read_text(encoding="utf-8"))


def typed_config(rel: str, job: str):
    from sbs.config import load_config

    mod, cls = JOB_CONFIGS[job]
    path = ROOT / rel
    assert path.is_file(), f"{rel}: referenced config does not exist"
    return load_config(getattr(importlib.import_module(mod), cls), path)


DOCS = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")


def docs_table() -> dict[str, list[str]]:
    """docs/cluster.md's file table: file -> [what it is for, command, hardware it assumes]."""
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", DOCS, re.M)
    return {f: [c.strip() for c in rest.split(" | ")] for f, rest in rows}


def test_docs_table_names_every_cluster_file():
    table = docs_table()
    shipped = {str(p.relative_to(ROOT)) for p in SHIPPED}
    assert shipped <= set(table), f"cluster files docs/cluster.md does not describe: {shipped - set(table)}"
    assert all((ROOT / f).exists() for f in table), "docs/cluster.md describes a file that does not exist"


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_is_the_hardware_the_docs_table_states(path: Path):
    """The 'hardware it assumes' cell (e.g. 'teacher p5.48xlarge (8x H100 80 GB), 0-2') is what the
    YAML asks the cloud for: machine type, GPU count and model, min-max workers, shared storage."""
    _, command, hardware = docs_table()[f"cluster/{path.name}"]
    assert command == f"`ray up cluster/{path.name}`"
    cfg = load_yaml(path)
    types = cfg["available_node_types"]
    *nodes, storage = hardware.split("; ")
    seen = set()
    for part in nodes:
        m = re.fullmatch(r"(\w+) ([\w.-]+)(?: \((?:CPU|(\d+)x (\w+) [^)]*)\))?(?:, (\d+)-(\d+))?", part)
        assert m, f"unparsed hardware cell part: {part!r}"
        name, machine, gpus, gpu_model, lo, hi = m.groups()
        t = types[name]
        seen.add(name)
        assert machine == t["node_config"].get("InstanceType", t["node_config"].get("machineType")), name
        assert t["resources"]["GPU"] == int(gpus or 0), f"{name}: GPUs"
        if gpu_model:
            assert t["resources"].get(f"accelerator_type:{gpu_model}") == 1, f"{name}: not advertised as {gpu_model}"
        if lo is not None:
            assert (t["min_workers"], t["max_workers"]) == (int(lo), int(hi)), f"{name}: workers"
    assert seen == set(types) and cfg["head_node_type"] == "head"
    mount = storage.split(" at ")[-1]
    assert mount == cfg["metadata"]["sbs"]["shared_storage"] == "/mnt/cluster_storage"
    assert f"-v {mount}:{mount}" in cfg["docker"]["run_options"], "the shared storage is mounted into the container"
    assert cfg["file_mounts"] == {"~/sbs": "."}  # docs: file_mounts syncs . to ~/sbs on every node
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_kuberay_names_the_docs_commands_use():
    """docs/cluster.md's kubectl commands name objects by the manifests' metadata.name (KubeRay
    derives <cluster>-head-svc and <service>-serve-svc); the image tag is the one docker build makes."""
    docs = kuberay_docs()
    names = {d["kind"]: d["metadata"]["name"] for d in docs.values() if d["kind"] != "RayJob"}
    jobs = {d["metadata"]["name"] for d in docs.values() if d["kind"] == "RayJob"}
    assert set(re.findall(r"kubectl get rayjob ([\w-]+)", DOCS)) == jobs == {"sbs-rationales", "sbs-train"}
    assert re.findall(r"svc/([\w-]+)-head-svc", DOCS) == [names["RayCluster"]]
    assert re.findall(r"svc/([\w-]+)-serve-svc", DOCS) == [names["RayService"]]
    assert re.findall(r"kubectl get secret ([\w-]+)", DOCS) == [names["RayCluster"]]  # KubeRay's token Secret
    pvc = docs["storage.yaml"]
    assert names["PersistentVolumeClaim"] == "sbs-shared" and "`sbs-shared`" in docs_table()["cluster/kuberay/storage.yaml"][0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "standard-rwx"
    tag = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOCS).group(1)
    assert re.search(rf"sed -i 's#image: {re.escape(tag)}#", DOCS), "the sed must rewrite the tag docker build made"
    for doc in docs.values():
        spec = cluster_spec(doc)
        for g in [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", []) if spec else []:
            c = g["template"]["spec"]["containers"][0]
            assert c["image"] == tag, f"{doc['metadata']['name']}: image {c['image']}, docs build {tag}"
            assert {"name": "shared", "mountPath": "/mnt/cluster_storage"} in c["volumeMounts"]


SHIPPED = LAUNCHER + KUBERAY + sorted((ROOT / "configs" / "cluster").glob("*.yaml")) + [ROOT / "cluster" / "Dockerfile"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_opens_with_purpose_command_and_hardware(path: Path):
    head = path.read_text(encoding="utf-8").split("\n\n")[0]
    lines = head.splitlines()
    assert lines and all(l.startswith("#") for l in lines[:3]), f"{path.name}: must open with a comment block"
    assert re.search(r"\b(ray (up|job submit)|kubectl apply|serve deploy|docker build)\b", head), \
        f"{path.name}: the opening comment must show the command that uses it"
    assert "Hardware" in head, f"{path.name}: the opening comment must say what hardware it assumes"


# ---- Ray cluster launcher ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_validates_with_ray(path: Path, ray_schema: dict):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_yaml(path)
    jsonschema.validate(cfg, ray_schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # defaults merged, as `ray up` does


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_node_types_are_coherent(path: Path):
    cfg = load_yaml(path)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    for name, t in types.items():
        res = t.get("resources")
        assert res and "CPU" in res and "GPU" in res, f"{name}: list CPU and GPU explicitly (GCP detects nothing)"
        assert t.get("min_workers", 0) <= t.get("max_workers", 0) or name == cfg["head_node_type"], name
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) <= cfg["max_workers"] == sum(t["max_workers"] for t in workers)
    ray_version = re.search(r":(\d+\.\d+\.\d+)-", cfg["docker"]["image"]).group(1)
    assert ray_version == ray.__version__, "cluster image must run the Ray version sbs is tested with"
    assert any("'.[gpu]'" in c for c in cfg["setup_commands"]), "setup must install sbs with its GPU extra"
    assert ".venv" in cfg["rsync_exclude"]
    region = cfg["provider"]["region"]  # zones and subnets must be in the provider's region
    assert all(z.strip().startswith(region) for z in cfg["provider"]["availability_zone"].split(","))
    for t in types.values():
        for nic in t["node_config"].get("networkInterfaces", []):
            assert f"regions/{region}/" in nic["subnetwork"], nic


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_gpu_types_fit_their_stage_configs(path: Path):
    cfg = load_yaml(path)
    meta, types = cfg["metadata"]["sbs"], cfg["available_node_types"]
    teacher, trainer = types[meta["teacher_node_type"]], types[meta["trainer_node_type"]]
    check_teacher(teacher["resources"], teacher["max_workers"], typed_config(meta["teacher_config"], "generate_rationales.py"))
    check_trainer(trainer["resources"], trainer["max_workers"], typed_config(meta["train_config"], "train_student.py"))
    for cfg_path in (meta["teacher_config"], meta["train_config"]):
        assert meta["shared_storage"] in (ROOT / cfg_path).read_text(), f"{cfg_path}: write to the shared storage"


def check_teacher(res: dict, max_nodes: int, tcfg) -> None:
    v = tcfg.vllm
    per_engine = v.tensor_parallel_size * v.pipeline_parallel_size
    assert tcfg.backend == "vllm" and v.device == "cuda"
    assert res.get("teacher") == 1, "the teacher type advertises the custom resource the job asks for"
    assert res["GPU"] % per_engine == 0, f"{res['GPU']} GPUs per node is not a multiple of TP x PP = {per_engine}"
    assert v.concurrency * per_engine <= res["GPU"] * max_nodes, "engines do not fit the teacher type scaled out"
    if v.accelerator_type:
        assert res.get(f"accelerator_type:{v.accelerator_type}") == 1, "vllm.accelerator_type is not this type's GPU"


def check_trainer(res: dict, max_nodes: int, scfg) -> None:
    assert res.get("trainer") == 1
    assert scfg.scale.use_gpu and scfg.train.engine == "deepspeed"
    assert scfg.scale.num_workers <= res["GPU"] * max_nodes, "more Train workers than trainer GPUs"
    assert scfg.scale.cpus_per_worker * res["GPU"] <= res["CPU"], "a full node of workers needs more CPUs"
    if scfg.scale.accelerator_type:
        assert res.get(f"accelerator_type:{scfg.scale.accelerator_type}") == 1, \
            "scale.accelerator_type is not the trainer type's GPU"


# ---- KubeRay ----------------------------------------------------------------------------------
S, I, B, N, Q = "str", "int", "bool", "number", "quantity"  # leaf types; Q: k8s quantity (str or int)


def smap(leaf=S):
    return ("map", leaf)


CONTAINER = {
    "name": S, "image": S, "imagePullPolicy": S, "command": [S], "args": [S], "workingDir": S,
    "ports": [{"containerPort": I, "name": S, "protocol": S}],
    "resources": {"requests": smap(Q), "limits": smap(Q)},
    "env": [{"name": S, "value": S, "valueFrom": {"secretKeyRef": {"name": S, "key": S}}}],
    "volumeMounts": [{"name": S, "mountPath": S, "readOnly": B, "subPath": S}],
}
POD_TEMPLATE = {
    "metadata": {"labels": smap(), "annotations": smap()},
    "spec": {
        "containers": [CONTAINER], "nodeSelector": smap(), "serviceAccountName": S, "restartPolicy": S,
        "tolerations": [{"key": S, "operator": S, "value": S, "effect": S}],
        "volumes": [{"name": S, "persistentVolumeClaim": {"claimName": S, "readOnly": B},
                     "emptyDir": {"medium": S, "sizeLimit": Q}}],
    },
}
CLUSTER_SPEC = {  # RayClusterSpec (raycluster_types.go)
    "rayVersion": S, "enableInTreeAutoscaling": B, "suspend": B, "headServiceAnnotations": smap(),
    "authOptions": {"mode": S},
    "autoscalerOptions": {"upscalingMode": S, "idleTimeoutSeconds": I, "image": S, "imagePullPolicy": S,
                          "resources": {"requests": smap(Q), "limits": smap(Q)}},
    "headGroupSpec": {"serviceType": S, "enableIngress": B, "rayStartParams": smap(), "template": POD_TEMPLATE},
    "workerGroupSpecs": [{"groupName": S, "replicas": I, "minReplicas": I, "maxReplicas": I, "numOfHosts": I,
                          "rayStartParams": smap(), "template": POD_TEMPLATE}],
}
META = {"name": S, "namespace": S, "labels": smap(), "annotations": smap()}
KINDS = {
    "RayCluster": {"apiVersion": S, "kind": S, "metadata": META, "spec": CLUSTER_SPEC},
    "RayJob": {"apiVersion": S, "kind": S, "metadata": META, "spec": {  # RayJobSpec (rayjob_types.go)
        "entrypoint": S, "entrypointResources": S, "entrypointNumCpus": N, "entrypointNumGpus": N,
        "runtimeEnvYAML": S, "jobId": S, "submissionMode": S, "shutdownAfterJobFinishes": B,
        "ttlSecondsAfterFinished": I, "activeDeadlineSeconds": I, "backoffLimit": I, "suspend": B,
        "metadata": smap(), "clusterSelector": smap(), "submitterConfig": {"backoffLimit": I},
        "rayClusterSpec": CLUSTER_SPEC}},
    "RayService": {"apiVersion": S, "kind": S, "metadata": META, "spec": {  # RayServiceSpec
        "serveConfigV2": S, "rayClusterConfig": CLUSTER_SPEC}},
    "PersistentVolumeClaim": {"apiVersion": S, "kind": S, "metadata": META, "spec": {
        "accessModes": [S], "storageClassName": S, "volumeMode": S, "resources": {"requests": smap(Q)}}},
}
ENUMS = {"mode": {"disabled", "token"}, "upscalingMode": {"Default", "Aggressive", "Conservative"},
         "submissionMode": {"K8sJobMode", "HTTPMode", "InteractiveMode"},
         "accessModes": {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}}


def check_fields(value, allowed, where: str) -> None:
    """Recursively: only allowed keys, and leaves of the CRD's type (map[string]string takes strings)."""
    if isinstance(allowed, dict):
        assert isinstance(value, dict), f"{where}: expected an object"
        for k, v in value.items():
            assert k in allowed, f"{where}.{k}: not a field of this kind (allowed: {sorted(allowed)})"
            check_fields(v, allowed[k], f"{where}.{k}")
            if k in ENUMS:
                for item in v if isinstance(v, list) else [v]:
                    assert item in ENUMS[k], f"{where}.{k}: {item!r} not in {sorted(ENUMS[k])}"
    elif isinstance(allowed, list):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, v in enumerate(value):
            check_fields(v, allowed[0], f"{where}[{i}]")
    elif isinstance(allowed, tuple):  # ("map", leaf): free keys
        assert isinstance(value, dict), f"{where}: expected a map"
        for k, v in value.items():
            check_fields(v, allowed[1], f"{where}.{k}")
    else:
        ok = {S: lambda x: isinstance(x, str), I: lambda x: isinstance(x, int) and not isinstance(x, bool),
              B: lambda x: isinstance(x, bool), N: lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              Q: lambda x: isinstance(x, (str, int)) and not isinstance(x, bool)}[allowed]
        assert ok(value), f"{where}: {value!r} is not a {allowed}"


def test_field_check_rejects_unknown_and_mistyped_fields():
    bad = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"},
           "spec": {"entrypoint": "python x.py", "entrypointResource": "{}"}}
    with pytest.raises(AssertionError, match="entrypointResource"):
        check_fields(bad, KINDS["RayJob"], "RayJob")
    cr = load_yaml(ROOT / "cluster" / "kuberay" / "raycluster.yaml")
    cr["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # CRD: map[string]string
    with pytest.raises(AssertionError, match="num-cpus"):
        check_fields(cr, KINDS["RayCluster"], "RayCluster")


def cluster_spec(doc: dict) -> dict | None:
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(doc["kind"])


def autoscaling_config(doc: dict, spec: dict) -> dict:
    """Ray's own KubeRay translation (it also runs the autoscaler's validate_config)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": doc["metadata"]["name"], "namespace": "default"}, "spec": spec})


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_fields_and_ray_translation(path: Path):
    doc = load_yaml(path)
    assert doc["kind"] in KINDS, f"{path.name}: unexpected kind {doc['kind']}"
    check_fields(doc, KINDS[doc["kind"]], doc["kind"])
    spec = cluster_spec(doc)
    if spec is None:
        return
    assert doc["apiVersion"] == "ray.io/v1" and spec["rayVersion"] == ray.__version__
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    for g in groups:
        c = g["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first
        assert c["resources"]["requests"] == c["resources"]["limits"], f"{c['name']}: requests == limits"
    for g in spec.get("workerGroupSpecs", []):
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"] or g["minReplicas"] <= g["maxReplicas"]
    nodes = autoscaling_config(doc, spec)["available_node_types"]
    for name, t in nodes.items():
        assert "CPU" in t["resources"], f"{name}: no CPU resource"


def kuberay_docs() -> dict[str, dict]:
    return {p.name: load_yaml(p) for p in KUBERAY}


def test_kuberay_images_volumes_and_dockerfile_agree():
    docs = kuberay_docs()
    images, claims = set(), set()
    for doc in docs.values():
        spec = cluster_spec(doc)
        for g in [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", []) if spec else []:
            images |= {c["image"] for c in g["template"]["spec"]["containers"]}
            claims |= {v["persistentVolumeClaim"]["claimName"] for v in g["template"]["spec"].get("volumes", [])
                       if "persistentVolumeClaim" in v}
    assert len(images) == 1, f"one sbs image everywhere, got {images}"
    assert claims == {docs["storage.yaml"]["metadata"]["name"]}
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile and f"WORKDIR {IMAGE_ROOT}" in dockerfile
    assert "'.[gpu]'" in dockerfile


def node_type_with(nodes: dict, resource: str) -> tuple[dict, int]:
    found = [t for t in nodes.values() if t["resources"].get(resource)]
    assert len(found) == 1, f"exactly one worker group must advertise {resource!r}"
    return found[0]["resources"], found[0]["max_workers"]


@pytest.mark.parametrize("name", ["rayjob-rationales.yaml", "rayjob-train.yaml"])
def test_rayjob_entrypoint_exists_and_fits_its_group(name: str):
    doc = kuberay_docs()[name]
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith(f"{IMAGE_ROOT}/jobs/"), argv
    job = argv[1].removeprefix(f"{IMAGE_ROOT}/")
    assert (ROOT / job).is_file(), f"{name}: entry point {job} is not in the repository"
    cfg_rel = argv[argv.index("--config") + 1].removeprefix(f"{IMAGE_ROOT}/")
    cfg = typed_config(cfg_rel, Path(job).name)
    wanted = json.loads(doc["spec"]["entrypointResources"])
    nodes = autoscaling_config(doc, doc["spec"]["rayClusterSpec"])["available_node_types"]
    (key,) = wanted
    res, max_nodes = node_type_with(nodes, key)
    (check_teacher if key == "teacher" else check_trainer)(res, max_nodes, cfg)


def test_raycluster_groups_fit_the_stage_configs():
    doc = kuberay_docs()["raycluster.yaml"]
    nodes = autoscaling_config(doc, doc["spec"])["available_node_types"]
    check_teacher(*node_type_with(nodes, "teacher"), typed_config("configs/cluster/teacher-esnli-vllm.yaml",
                                                                  "generate_rationales.py"))
    check_trainer(*node_type_with(nodes, "trainer"), typed_config("configs/cluster/train-esnli-t5-xxl.yaml",
                                                                  "train_student.py"))


# ---- Serve configs ----------------------------------------------------------------------------
def validate_serve(cfg: dict, where: str):
    """Ray Serve's schema, then each sbs application's args through the builder's own ServeConfig."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    out = []
    for app in schema.applications:
        mod, attr = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(mod), attr)), f"{where}: {app.import_path} not found"
        if app.import_path == "sbs.serve.app:build_app":
            from sbs.serve.app import config_from_args

            out.append(config_from_args(dict(app.args)))
    return out


SERVE_FILES = sorted((ROOT / "configs" / "serve").glob("*.yaml")) + sorted((ROOT / "configs" / "cluster").glob("serve*.yaml"))


@pytest.mark.parametrize("path", SERVE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_serve_configs_validate(path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)  # Serve config files name sbs configs relative to the repo root
    cfg = load_yaml(path)
    if "applications" in cfg:
        validate_serve(cfg, path.name)
    else:  # an sbs ServeConfig (`sbs serve --config`)
        from sbs.config import load_config
        from sbs.serve.config import ServeConfig

        load_config(ServeConfig, path)


def test_rayservice_serves_the_shipped_serve_config_on_its_gpus():
    doc = kuberay_docs()["rayservice.yaml"]
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_cfg == load_yaml(ROOT / "configs" / "cluster" / "serve-esnli.yaml"), \
        "serveConfigV2 must equal configs/cluster/serve-esnli.yaml (one source for both cluster kinds)"
    (scfg,) = validate_serve(serve_cfg, "rayservice.yaml")
    nodes = autoscaling_config(doc, doc["spec"]["rayClusterConfig"])["available_node_types"]
    gpu_pods = [t["resources"] for t in nodes.values() if t["resources"].get("GPU")]
    assert gpu_pods and all(scfg.ray_actor_options.num_gpus <= r["GPU"] for r in gpu_pods)
    assert scfg.device == "cuda"
    train = typed_config("configs/cluster/train-esnli-t5-xxl.yaml", "train_student.py")
    assert {s.export_dir for s in scfg.students} == {train.export_dir()}, "serve the student the train job exports"


def test_sbs_serve_config_is_the_rayservice_application():
    """`sbs serve` / jobs/serve_student.py and `serve deploy` / the RayService run one application."""
    from sbs.config import load_config
    from sbs.serve.config import ServeConfig

    (deploy,) = validate_serve(load_yaml(ROOT / "configs" / "cluster" / "serve-esnli.yaml"), "serve-esnli.yaml")
    assert load_config(ServeConfig, ROOT / "configs" / "cluster" / "serve-esnli-sbs.yaml") == deploy


# ---- scripts/run_pipeline.sh ------------------------------------------------------------------
def test_pipeline_script_profile_commands():
    """The cluster profile: every stage in order, each a `ray job submit --working-dir .` of an
    existing entry point, drivers placed by the launcher's custom resources, serving detached."""
    import os
    import subprocess

    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:1")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "run_pipeline.sh"), "--profile", "cluster", "--dry-run"],
                       env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    found = [re.match(r"== run_pipeline: (\w+): (ray job submit .*)$", l) for l in r.stderr.splitlines()]
    cmds = {m.group(1): shlex.split(m.group(2)) for m in found if m}
    assert list(cmds) == ["rationales", "train", "eval", "serve"]
    for stage, argv in cmds.items():
        assert argv[:3] == ["ray", "job", "submit"] and argv[argv.index("--working-dir") + 1] == "."
        entry = argv[argv.index("--") + 2]
        assert (ROOT / entry).is_file(), f"{stage}: {entry} missing"
    launcher = load_yaml(ROOT / "cluster" / "aws.yaml")["available_node_types"]
    for stage, want in (("rationales", "teacher"), ("train", "trainer"), ("eval", "trainer")):
        argv = cmds[stage]
        res = json.loads(argv[argv.index("--entrypoint-resources") + 1])
        assert res == {want: 1} and launcher[want]["resources"][want] >= 1
    assert "--detach" in cmds["serve"] and "--entrypoint-resources" not in cmds["serve"]
    train = cmds["train"]
    cfg = typed_config(train[train.index("--config") + 1], "train_student.py")
    assert cmds["eval"][cmds["eval"].index("--") + 3] == cfg.export_dir(), "evaluate the export training writes"
    ev = cmds["eval"]
    assert ev[ev.index("--device") + 1] == "cuda" and ev[ev.index("--entrypoint-num-gpus") + 1] == "1", \
        "a GPU evaluation must reserve the GPU it uses"


def test_pipeline_script_rejects_bad_input_before_submitting():
    import os
    import subprocess

    script = ["bash", str(ROOT / "scripts" / "run_pipeline.sh")]
    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:1")
    for args, msg in ((["--teacher", "configs/teacher/nope.yaml"], "not found"),
                      (["--profile", "cluster", "--only", "trian"], "unknown stage"),
                      (["--bogus"], "unknown argument"), ([], "no stage to run"),
                      (["--profile", "cluster", "--working-dir", "local:///no/such/dir"], "not a directory")):
        r = subprocess.run(script + args + ["--dry-run"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    env.pop("RAY_ADDRESS")
    r = subprocess.run(script + ["--profile", "cluster"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "RAY_ADDRESS" in r.stderr


def test_local_cluster_retries_a_node_that_did_not_register_and_names_it_when_it_never_does(tmp_path):
    """`ray start` gives a raylet 30 s to register; a start that ran out is cleaned up (its processes,
    by its node-manager port) and retried with fresh ports; after the last attempt the error names the node."""
    from sbs.local_cluster import LocalCluster

    class Flaky(LocalCluster):
        def __init__(self, fail: int):
            super().__init__(str(tmp_path))
            self.fail, self.started, self.cleaned = fail, [], []

        def _start(self, args):
            port = int(args[args.index("--node-manager-port") + 1])
            if len(self.cleaned) < self.fail:
                raise RuntimeError("The current node timed out during startup.")
            self.started.append(port)

        def _kill_node_procs(self, port):
            self.cleaned.append(port)
            return []

    c = Flaky(fail=2)
    node = c.add("trainer", cpus=1)
    assert node.name == "trainer-0" and c.started == [node.node_manager_port]
    assert len(c.cleaned) == 2 and node.node_manager_port not in c.cleaned  # fresh ports each attempt
    with pytest.raises(RuntimeError, match=r"node trainer-1: 3 starts failed; the last: The current node timed out"):
        Flaky(fail=3).add("trainer", cpus=1, name="trainer-1")
