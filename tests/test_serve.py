"""The served student over real HTTP: one Serve app (three untrained students) on 127.0.0.1.

Starting Serve costs ~25-40 s on 2 cores, so the whole module shares one app. Untrained weights give
arbitrary labels: these tests check that the service answers what the same export answers locally
(`Student.load(...).predict`), shapes, validation, status codes, health and routing, not accuracy.
The svamp and cqa students are causal (tiny GPT-2): untrained, they still write text, where the
untrained tiny T5 (esnli) stops at once; so served and local answers are compared on real text.
"""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from sbs.datasets import get_dataset
from sbs.predict import Student
from sbs.serve.config import ServeConfig
from sbs.serve.sample_models import make_export

MAX_ITEMS = 8
MAX_INPUT = 160  # tokens (ByT5: bytes + eos), small so "too long" is cheap to send
NLI = {"premise": "A man plays a guitar on stage.", "hypothesis": "A person is making music."}
SVAMP = {"problem": "Dan has 5 apples and buys 3 more. How many apples does Dan have?"}
CQA = {"question": "Where would you find a fish?", "choices": ["tree", "sky", "river", "desk", "car"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STUDENTS = [("esnli", "multitask", "tiny-t5"), ("svamp", "standard", "tiny-gpt2"), ("cqa", "single_task", "tiny-gpt2")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("students")
    return {d: make_export(root / d, d, m, kind=k, max_input_length=MAX_INPUT) for d, m, k in STUDENTS}


@pytest.fixture(scope="module")
def local(exports):
    """The same exports in this process: what the service must answer."""
    students = {d: Student.load(p) for d, p in exports.items()}

    def answer(dataset: str, record, explain: bool = False):
        text = record if isinstance(record, str) else get_dataset(dataset).format_input(record)
        p = students[dataset].predict([text], explain=explain and students[dataset].meta.can_explain, batch_size=1)[0]
        return {"label": p.label, "rationale": p.rationale}
    return answer


@pytest.fixture(scope="module")
def url(ray_local, exports):
    from ray import serve

    from sbs.serve.cli import deploy

    specs = [{"dataset": d, "export_dir": str(p)} for d, p in exports.items()]
    cfg = ServeConfig(port=_free_port(), students=specs, max_items_per_request=MAX_ITEMS,
                      batching={"max_batch_size": MAX_ITEMS, "batch_wait_timeout_s": 0.05},
                      ray_actor_options={"num_cpus": 0.5}, ingress={"num_cpus": 0.1})
    assert cfg.host == "127.0.0.1"
    try:
        yield deploy(cfg, ready_timeout=240)
    finally:
        serve.shutdown()


def post(url: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    headers = kw.pop("headers", {"content-type": "application/json"})
    return requests.post(url + "/v1/predict", data=data, headers=headers, timeout=60, **kw)


# --- each dataset's input shape, single and list -----------------------------------------------

@pytest.mark.parametrize("dataset,record,method", [
    ("esnli", NLI, "multitask"), ("svamp", SVAMP, "standard"), ("cqa", CQA, "single_task")])
def test_dataset_fields_single_and_list(url, local, dataset, record, method):
    r = post(url, {"dataset": dataset, "input": record})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["dataset"], body["method"], body["model"]) == (dataset, method, f"{dataset}-{method}")
    want = local(dataset, record)
    assert want["rationale"] is None  # label-only unless explain is asked
    assert [{k: p[k] for k in want} for p in body["predictions"]] == [want]
    if dataset != "esnli":
        assert want["label"], "a causal student writes a label even untrained: something to compare"

    r = post(url, {"dataset": dataset, "inputs": [record] * 3})
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [want["label"]] * 3


def test_raw_student_input_text(url):
    text = "Premise: A dog runs.\nHypothesis: An animal moves."
    r = post(url, {"dataset": "esnli", "input": text})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1
    r = post(url, {"dataset": "esnli", "inputs": [text, NLI]})  # raw text and fields may mix
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_list_is_batched_in_the_replica(url):
    r = post(url, {"dataset": "esnli", "inputs": [NLI] * MAX_ITEMS})
    assert r.status_code == 200, r.text
    stats = requests.get(url + "/v1/stats", timeout=30).json()["esnli"]
    # The 8 examples reached the replica as separate calls; @serve.batch regrouped them.
    assert stats["max_batch_size"] > 1, stats
    assert stats["max_batch_size"] <= MAX_ITEMS


# --- explain -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,record", [("esnli", NLI), ("cqa", CQA)])
def test_explain_returns_a_rationale_when_trained_for_it(url, local, dataset, record):
    r = post(url, {"dataset": dataset, "inputs": [record, record], "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["explain_unavailable"] is None
    want = local(dataset, record, explain=True)
    assert want["rationale"] is not None and (dataset == "esnli" or want["rationale"])
    assert [{k: p[k] for k in want} for p in body["predictions"]] == [want, want]


def test_explain_on_a_standard_student_says_it_cannot(url, local):
    r = post(url, {"dataset": "svamp", "input": SVAMP, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "cannot explain" in body["explain_unavailable"] and "'standard'" in body["explain_unavailable"]
    want = local("svamp", SVAMP)
    assert want["label"] and body["predictions"][0]["label"] == want["label"]  # the label is unaffected
    assert body["predictions"][0]["rationale"] is None


# --- health, model info, several students -----------------------------------------------------

def test_healthz(url):
    r = requests.get(url + "/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["failing"] == []
    assert r.json()["students"] == ["cqa", "esnli", "svamp"]


def test_healthz_is_503_while_a_student_has_no_running_replica(url, local):
    """The svamp student's only replica crashes (killed): until Serve has replaced it, /healthz answers
    503 naming that student and no other; then 200 again, and the new replica answers as before."""
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#student-svamp#" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    down, deadline = None, time.time() + 150
    while True:
        r = requests.get(url + "/healthz", timeout=30)
        if r.status_code == 503 and down is None:
            down = r.json()
        if down is not None and r.status_code == 200:
            break
        assert time.time() < deadline, f"no 503 then 200 within 150 s: last {r.status_code} {r.text[:200]}, 503 seen: {down}"
        time.sleep(0.2)
    assert down["status"] == "unhealthy" and down["students"] == ["cqa", "esnli", "svamp"]
    (why,) = down["failing"]
    assert why.startswith("svamp: ") and why.endswith(", no running replica"), why
    r = post(url, {"dataset": "svamp", "input": SVAMP})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == local("svamp", SVAMP)["label"]


def test_model_info(url):
    r = requests.get(url + "/v1/model", timeout=30)
    assert r.status_code == 200
    students = {s["dataset"]: s for s in r.json()["students"]}
    assert set(students) == {"cqa", "esnli", "svamp"}
    e = students["esnli"]
    assert e["method"] == "multitask" and e["label_space"] == ["entailment", "neutral", "contradiction"]
    assert e["name"] == "esnli-multitask" and len(e["version"]) == 12 and e["can_explain"]
    assert e["input_fields"] == ["premise", "hypothesis"] and e["max_input_tokens"] == MAX_INPUT
    assert students["svamp"]["label_space"] is None and not students["svamp"]["can_explain"]
    one = requests.get(url + "/v1/model", params={"dataset": "cqa"}, timeout=30).json()
    assert one["dataset"] == "cqa" and one["method"] == "single_task"


def test_dataset_selects_the_student(url):
    got = {d: post(url, {"dataset": d, "input": rec}).json()["model"]
           for d, rec in (("esnli", NLI), ("svamp", SVAMP), ("cqa", CQA))}
    assert got == {"esnli": "esnli-multitask", "svamp": "svamp-standard", "cqa": "cqa-single_task"}


# --- bad input: a 4xx naming the problem, never a 5xx, and the service stays up -----------------

BAD = [
    # (case, body, status, words the message must contain)
    ("malformed json", '{"dataset": "esnli", "input": ', 400, ["not valid JSON"]),
    ("body not an object", "[1, 2]", 422, ["dictionary"]),
    ("empty body", "", 422, ["body is missing"]),
    ("no input", {"dataset": "esnli"}, 422, ["'input'", "'inputs'"]),
    ("input and inputs", {"dataset": "esnli", "input": NLI, "inputs": [NLI]}, 422, ["exactly one"]),
    ("extra top-level field", {"dataset": "esnli", "input": NLI, "temperature": 0.7}, 422,
     ["temperature", "unknown field"]),
    ("missing record field", {"dataset": "esnli", "input": {"premise": "x"}}, 422, ["input", "hypothesis", "missing"]),
    ("extra record field", {"dataset": "esnli", "input": {**NLI, "label": "neutral"}}, 422,
     ["input", "unknown field", "label"]),
    ("wrong type in record", {"dataset": "esnli", "input": {**NLI, "premise": 5}}, 422,
     ["premise", "wrong type"]),
    ("wrong type of explain", {"dataset": "esnli", "input": NLI, "explain": "maybe"}, 422, ["explain", "boolean"]),
    ("wrong type of dataset", {"dataset": 5, "input": NLI}, 422, ["dataset", "string"]),
    ("inputs not a list", {"dataset": "esnli", "inputs": "abc"}, 422, ["inputs", "list"]),
    ("example of wrong type", {"dataset": "esnli", "inputs": [NLI, 3]}, 422, ["inputs[1]", "got int"]),
    ("empty raw text", {"dataset": "esnli", "input": "   "}, 422, ["input", "empty string"]),
    ("empty field", {"dataset": "esnli", "input": {**NLI, "hypothesis": ""}}, 422, ["hypothesis", "empty"]),
    ("empty list", {"dataset": "esnli", "inputs": []}, 422, ["empty list"]),
    ("cqa choices not a list", {"dataset": "cqa", "input": {**CQA, "choices": "river"}}, 422, ["choices"]),
    ("cqa one choice", {"dataset": "cqa", "input": {**CQA, "choices": ["river"]}}, 422, ["choices", "2 to"]),
    ("too many items", {"dataset": "esnli", "inputs": [NLI] * (MAX_ITEMS + 1)}, 422,
     ["inputs", f"at most {MAX_ITEMS}", "max_items_per_request"]),
    ("longer than the model's limit", {"dataset": "esnli", "inputs": [NLI, {**NLI, "premise": "a" * 300}]}, 422,
     ["inputs[1]", "tokens", f"limit is {MAX_INPUT}"]),
    ("megabyte string", {"dataset": "svamp", "input": "7 " * 500_000}, 422, ["input", "characters"]),
    ("unknown dataset", {"dataset": "anli1", "input": NLI}, 404, ["anli1", "['cqa', 'esnli', 'svamp']"]),
    ("no dataset with several students", {"input": NLI}, 422, ["dataset", "several students"]),
]


@pytest.mark.parametrize("case,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_problem(url, case, body, status, words):
    r = post(url, body)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text[:300]}"
    msg = r.json()["error"]
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"


def test_wrong_content_type_and_method_are_4xx(url):
    r = post(url, json.dumps({"dataset": "esnli", "input": NLI}), headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500, r.text
    assert requests.get(url + "/v1/predict", timeout=30).status_code == 405
    r = requests.get(url + "/v1/model", params={"dataset": "nope"}, timeout=30)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_service_still_answers_after_bad_input(url):
    for _, body, _, _ in BAD:  # all of them again, back to back
        assert 400 <= post(url, body).status_code < 500
    assert requests.get(url + "/healthz", timeout=30).status_code == 200
    r = post(url, {"dataset": "esnli", "inputs": [NLI, NLI]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


# --- choice decoding: per-label scores -----------------------------------------------------------

@pytest.mark.parametrize("dataset,record,labels", [
    ("esnli", NLI, {"entailment", "neutral", "contradiction"}),  # a fixed label space
    ("cqa", CQA, set(CQA["choices"]))])  # each example's own choices (a single_task student)
def test_choice_decoding_returns_a_score_per_label(url, dataset, record, labels):
    r = post(url, {"dataset": dataset, "inputs": [record, record], "decoding": "choices"})
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        assert set(p["scores"]) == labels and all(v < 0 for v in p["scores"].values())
        assert p["label"] == max(p["scores"], key=p["scores"].get)
    # the same example scored alone or batched with another gets the same scores
    alone = post(url, {"dataset": dataset, "input": record, "decoding": "choices"}).json()["predictions"][0]
    assert alone["scores"] == pytest.approx(r.json()["predictions"][0]["scores"], abs=1e-4)
    gen = post(url, {"dataset": dataset, "input": record}).json()["predictions"][0]
    assert gen["scores"] is None  # free generation (the default) has no scores


@pytest.mark.parametrize("body,field", [
    ({"dataset": "svamp", "input": SVAMP, "decoding": "choices"}, "input"),  # open answers: nothing to rank
    ({"dataset": "cqa", "input": "Where is a fish?", "decoding": "choices"}, "input"),  # raw text: no choices
    ({"dataset": "esnli", "input": NLI, "decoding": "beam"}, "decoding")])
def test_choice_decoding_without_a_closed_answer_set_is_422(url, body, field):
    r = post(url, body)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    if field == "input":
        assert "decoding=choices needs a closed answer set" in r.json()["error"]


@pytest.mark.parametrize("body,field", [
    # valid JSON (a \ud800 escape), but no Unicode text: every tokenizer raises on it
    ('{"dataset": "esnli", "inputs": ["\\ud800"]}', "inputs[0]"),
    ('{"dataset": "esnli", "input": {"premise": "A dog \\udfff runs.", "hypothesis": "A dog moves."}}', "input"),
    ('{"dataset": "cqa", "input": {"question": "Where?", "choices": ["a", "b\\ud800"]}}', "input")])
def test_lone_surrogates_are_422_naming_the_field(url, body, field):
    r = post(url, body)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert "lone surrogate" in r.json()["error"]
    if "choices" in body:
        assert "choices[1]" in r.json()["error"]
