"""Teacher prompts and configs: prompt files exist, exemplars never come from test, both
renderings look right, every shipped teacher config loads, ranges are checked."""
from pathlib import Path

import pytest
import yaml

from sbs.config import ConfigError, load_config
from sbs.datasets import DATASETS, get_dataset
from sbs.teacher.config import TeacherConfig
from sbs.teacher.prompts import Renderer, default_stop, load_prompt, prompts_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_prompt_file_exemplars_are_real_non_test_examples(name):
    ds = get_dataset(name)
    assert (prompts_dir() / f"{name}.yaml").is_file()
    spec = load_prompt(ds)
    assert 6 <= len(spec.exemplars) <= 10
    assert spec.split in ds.splits() and spec.split != "test"
    test_ids = {e.id for e in ds.load("test")}
    by_id = {e.id: e for e in ds.load(spec.split)}
    assert len({e.id for e in spec.exemplars}) == len(spec.exemplars), "duplicate exemplar id"
    for ex in spec.exemplars:
        assert ex.id not in test_ids, f"{name}: exemplar {ex.id} is a test example"
        assert ex.id in by_id, f"{name}: exemplar {ex.id} not in {spec.split}"
        assert ex.input == by_id[ex.id].input, f"{name}: exemplar {ex.id} input differs from the dataset's"
        res = ds.parse(ex.target, by_id[ex.id])  # the target is in the format the parser reads
        assert res.ok and ds.score(res.label, by_id[ex.id]), (ex.id, res)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_rendering_fewshot_and_zeroshot(name):
    ds = get_dataset(name)
    spec = load_prompt(ds)
    x = ds.load("test", limit=1)[0]
    few, zero = Renderer(spec, "fewshot"), Renderer(spec, "zeroshot")
    p = few.completion(x.input)
    assert p.endswith(spec.query.replace("{input}", x.input))
    assert all(e.target in p for e in spec.exemplars) and p.count("\n\n") == len(spec.exemplars)
    m = few.messages(x.input)
    assert [t["role"] for t in m] == ["system"] + ["user", "assistant"] * len(spec.exemplars) + ["user"]
    assert m[-1]["content"] == x.input and m[2]["content"] == spec.exemplars[0].target
    z = zero.completion(x.input)
    assert z.startswith(spec.answer_format) and z.endswith("Let's think step by step.")
    assert not any(e.target in z for e in spec.exemplars) and zero.exemplar_ids == frozenset()
    zm = zero.messages(x.input)
    assert [t["role"] for t in zm] == ["system", "user"] and "step by step" in zm[1]["content"]
    assert few.exemplar_ids == {e.id for e in spec.exemplars}
    assert Renderer(spec, "fewshot", hold_out=False).exemplar_ids == frozenset()
    assert default_stop(ds)[0] == "\n\n"


def test_bad_prompt_file_names_the_field(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"query": "Q:", "answer_format": "x", "exemplars": []}))
    with pytest.raises(ValueError, match=r"p\.yaml: field 'query' must contain \{input\}"):
        load_prompt(get_dataset("svamp"), p)
    p.write_text(yaml.safe_dump({"query": "Q: {input}", "answer_format": "x", "exemplars": [{"id": "a", "input": ""}]}))
    with pytest.raises(ValueError, match=r"exemplars\[0\]: missing or empty \['input', 'target'\]"):
        load_prompt(get_dataset("svamp"), p)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "teacher").glob("*.yaml")), ids=lambda p: p.name)
def test_every_teacher_config_loads_and_says_how_to_run(path):
    assert path.read_text().startswith("#"), f"{path} must start with a how-to-run comment"
    if path.name != "base.yaml":
        cfg = load_config(TeacherConfig, path)
        assert path.stem.startswith(cfg.dataset) and cfg.split in get_dataset(cfg.dataset).splits()


@pytest.mark.parametrize("override,msg", [
    ("sampling.k=0", "sampling.k"), ("sampling.k=3", "temperature > 0"), ("sampling.top_p=0", "sampling.top_p"),
    ("vllm.tensor_parallel_size=0", "vllm.tensor_parallel_size"), ("vllm.gpu_memory_utilization=1.5",
    "vllm.gpu_memory_utilization"), ("vllm.dtype=int4", "vllm.dtype"), ("openai.base_url=ftp://x", "openai.base_url"),
    ("backend=nope", "backend: Input should be 'hf', 'openai', 'replay' or 'vllm'"), ("num_actors=0", "num_actors"),
    ("source=file", "input_path"), ("prompt.mode=oneshot", "prompt.mode"),
    ("openai.api_key=sk-x", "openai.api_key: unknown field")])
def test_config_ranges_are_checked(override, msg):
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.").replace("(", r"\(")):
        load_config(TeacherConfig, None, [override])


def test_job_entry_point_and_cli_parse_their_arguments():
    import subprocess
    import sys

    for cmd in ([sys.executable, str(ROOT / "jobs/generate_rationales.py"), "--help"],
                [sys.executable, "-m", "sbs.cli", "rationales", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 0 and "--config" in r.stdout and "overrides" in r.stdout, r.stderr[-2000:]


def test_backend_names_are_the_config_literal_and_config_imports_no_backend():
    import subprocess
    import sys
    from typing import get_args

    from sbs.teacher.backends import BACKENDS

    assert sorted(get_args(TeacherConfig.model_fields["backend"].annotation)) == sorted(BACKENDS)
    code = ("import sys; from sbs.teacher.config import TeacherConfig; TeacherConfig(backend='hf'); "
            "print(sorted(m for m in sys.modules if m.startswith('sbs.teacher.backends')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]


def _generic(tmp_path, prompt: dict | None):
    import json

    rows = [{"uid": f"t{i}", "text": f"ticket {i}", "cat": ["billing", "bug"][i % 2],
             "said": f"It is about {['money', 'a crash'][i % 2]}. So the answer is {['billing', 'bug'][i % 2]}."}
            for i in range(6)]
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    lines = ["name: tickets", "files: {train: data/train.jsonl}", "input_columns: [text]", "label_column: cat",
             "id_column: uid", "label_space: [billing, bug]", "teacher_column: said"]
    if prompt is not None:
        (tmp_path / "data" / "prompt.yaml").write_text(yaml.safe_dump(prompt))
        lines.append("prompt_file: data/prompt.yaml")
    (tmp_path / "tickets.yaml").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "tickets.yaml")


TICKETS_PROMPT = {"query": "Ticket: {input}\nA:", "answer_format": 'End with "So the answer is <billing|bug>."',
                  "exemplars": [{"id": "t0", "input": "ticket 0", "target": "Money. So the answer is billing."},
                                {"id": "t1", "input": "ticket 1", "target": "A crash. So the answer is bug."}]}


def test_generic_dataset_brings_its_own_prompt_file(tmp_path):
    ds = get_dataset(_generic(tmp_path, TICKETS_PROMPT))
    spec = load_prompt(ds)
    assert [e.id for e in spec.exemplars] == ["t0", "t1"] and spec.dataset == "tickets"
    p = Renderer(spec, "fewshot").completion("ticket 9")
    assert p.startswith("Ticket: ticket 0\nA: Money. So the answer is billing.\n\n")
    assert p.endswith("Ticket: ticket 9\nA:")
    # without a prompt file: zero-shot works, few-shot says what to add
    (tmp_path / "plain").mkdir()
    plain = get_dataset(_generic(tmp_path / "plain", None))
    assert Renderer(load_prompt(plain), "zeroshot").completion("x").endswith("Let's think step by step.")
    with pytest.raises(ValueError, match=r"prompt\.mode=fewshot: no exemplars for dataset 'tickets'; name a prompt "
                                         r"file in its YAML \(prompt_file"):
        Renderer(load_prompt(plain), "fewshot")


def test_generic_prompt_file_errors_name_the_file_and_field(tmp_path):
    path = _generic(tmp_path, {**TICKETS_PROMPT, "query": "Ticket:"})
    with pytest.raises(ValueError, match=r"data/prompt\.yaml: field 'query' must contain \{input\}"):
        load_prompt(get_dataset(path))
    (tmp_path / "data" / "prompt.yaml").unlink()
    with pytest.raises(ConfigError, match=r"tickets\.yaml: prompt_file: .*data/prompt\.yaml not found"):
        get_dataset(path)
