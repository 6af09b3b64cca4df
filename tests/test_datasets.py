"""The dataset layer against the real shipped data and recorded PaLM outputs, and hostile input."""
from __future__ import annotations

import json

import pytest

from sbs.datasets import DATASETS, GenericDataset, GenericDatasetConfig, InputError, SplitUnavailable, get_dataset
from sbs.datasets.base import Example

ALL = [(n, s) for n, d in DATASETS.items() for s in d.splits()]

HOSTILE = [
    "", " ", "\n\n\n", "\x00", "The answer is", "So the answer is", "Answer:", "The answer is ().",
    "The answer is (__import__('os').system('rm -rf /')).", "So the answer is (z) nothing.",
    "x" * 200_000, ("So the answer is (a) " * 5000), "Answer: " * 10_000, "答案是 (a)。 🤖" * 100,
    "\nAnswer: entailment\n\nPremise: injected\nHypothesis: x\nReasonings: y\nAnswer: contradiction",
    "So the answer is neutral.\n\nQ: injected?\nA: So the answer is entailment.",
    "Because. The answer is (1 / 0).", "Because. The answer is (9" + ")" * 5000 + ".",
    "\ud800 So the answer is contradiction.", None, 42, b"bytes", ["list"],
]


@pytest.mark.parametrize("name,split", ALL)
def test_every_recorded_output_parses_or_rejects(name, split):
    ds = DATASETS[name]
    examples = ds.load(split)
    assert examples and all(ex.teacher is not None for ex in examples)
    parsed = 0
    for ex in examples:
        res = ds.parse(ex.teacher, ex)  # must never raise
        if res.ok:
            parsed += 1
            assert res.rationale and res.label
            assert "\n\n" not in res.rationale  # invented next exemplars are cut off
            if ds.label_space:
                assert res.label in ds.label_space
        else:
            assert res.reason and isinstance(res.detail, str)
    assert parsed / len(examples) > 0.95, f"{name}/{split}: only {parsed}/{len(examples)} parsed"


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_parsers_never_raise_on_hostile_strings(name, text):
    ds = DATASETS[name]
    ex = ds.load(ds.splits()[-1], limit=1)[0]
    for e in (ex, None):
        res = ds.parse(text, e)
        # parse() turns a parser exception into Rejected("parser_error"): that is a bug, not an answer
        assert res.ok or res.reason != "parser_error", res.detail
        assert ds.score(text, ex) in (True, False)
        if res.ok and name == "svamp":
            assert "__import__" not in res.label


def test_parse_examples_per_dataset():
    sv, cqa, es, an = (DATASETS[n] for n in ("svamp", "cqa", "esnli", "anli1"))
    r = sv.parse("He has 84 points in 2 rounds. 84 / 2 = 42. The answer is (84 / 2).\n\nQ: next")
    assert r.ok and r.label == "(84 / 2)" and r.rationale.endswith("= 42.")
    r = sv.parse("So 2 * x = 12. The answer is (2 * x).")
    assert not r.ok and r.reason == "unparseable_equation"
    ex = cqa.load("test", limit=1)[0]
    letter = "abcde"[ex.fields["choices"].index(ex.label)]
    r = cqa.parse(f"Because reasons. So the answer is ({letter}) {ex.label}.\n\nQ: x", ex)
    assert r.ok and r.label == ex.label.lower() and r.rationale == "Because reasons."
    r = cqa.parse("Hmm. So the answer is either (a) x or (b) y.", ex)
    assert not r.ok and r.reason == "ambiguous_answer"  # a hedge has its own reason
    r = es.parse("A man is a person.\nAnswer: Entailment\n\nPremise: next")
    assert r.ok and r.label == "entailment"
    r = es.parse("A man is a person.\nAnswer: maybe")
    assert not r.ok and r.reason == "label_not_in_label_space"
    r = an.parse("Premise says so. So the answer is neutral.\n\nPremise: x")
    assert r.ok and (r.rationale, r.label) == ("Premise says so.", "neutral")
    r = an.parse("So the answer is neutral.")
    assert not r.ok and r.reason == "empty_rationale"


def test_scoring_rules():
    sv, cqa, es = DATASETS["svamp"], DATASETS["cqa"], DATASETS["esnli"]
    ex = sv.load("train", limit=1)[0]  # ( 84.0 / 2.0 )
    assert sv.score("84 / 2", ex) and sv.score("42", ex) and sv.score("(42.00001)", ex)
    assert not sv.score("84 * 2", ex) and not sv.score("__import__('os')", ex) and not sv.score("", ex)
    ex = cqa.load("test", limit=1)[0]
    letter = "abcde"[ex.fields["choices"].index(ex.label)]
    for pred in (ex.label, ex.label.upper() + ".", f"({letter})", letter, f"({letter}) {ex.label}", f" {ex.label} "):
        assert cqa.score(pred, ex), pred
    other = next(c for c in ex.fields["choices"] if c != ex.label)
    assert not cqa.score(other, ex) and not cqa.score("(z)", ex)
    ex = es.load("test", limit=1)[0]
    assert es.score(ex.label.upper() + ".", ex) and es.score(f"  {ex.label}\n", ex)
    assert not es.score("entailment neutral", ex)


@pytest.mark.parametrize("name,split", ALL)
def test_ids_are_stable_and_unique(name, split):
    ds = DATASETS[name]
    a = [e.id for e in ds.load(split)]
    from sbs.datasets.base import _read_shipped

    _read_shipped.cache_clear()
    b = [e.id for e in ds.load(split)]
    assert a == b and len(set(a)) == len(a)


def test_shipped_sizes_match_the_paper_files():
    sizes = {(n, s): len(DATASETS[n].load(s)) for n, s in ALL}
    assert sizes == {("svamp", "train"): 800, ("svamp", "test"): 200, ("cqa", "train"): 9741, ("cqa", "test"): 1221,
                     ("esnli", "valid"): 9842, ("esnli", "test"): 9824, ("anli1", "valid"): 1000,
                     ("anli1", "test"): 1000}


def test_offline_train_split_missing_is_said_not_silent():
    for name in ("esnli", "anli1"):
        with pytest.raises(SplitUnavailable, match="train on 'valid' explicitly"):
            DATASETS[name].load("train")
    with pytest.raises(KeyError, match="unknown 'nope'"):
        get_dataset("nope")


def test_student_inputs_and_field_checks():
    cqa, es, sv = DATASETS["cqa"], DATASETS["esnli"], DATASETS["svamp"]
    assert cqa.format_input({"question": "Q?", "choices": ["x", "y"]}) == "Q?\nAnswer Choices:\n(a) x\n(b) y"
    assert es.format_input({"premise": "P", "hypothesis": "H"}) == "Premise: P\nHypothesis: H"
    assert sv.format_input({"problem": "1 and 2?"}) == "1 and 2?"
    for ds, rec, msg in [
        (es, {"premise": "P"}, "missing field.*hypothesis"),
        (es, {"premise": "P", "hypothesis": "H", "x": 1}, "unknown field.*'x'"),
        (es, {"premise": " ", "hypothesis": "H"}, "'premise' is empty"),
        (es, {"premise": 3, "hypothesis": "H"}, "'premise' has the wrong type"),
        (cqa, {"question": "Q", "choices": "a,b"}, "'choices' has the wrong type"),
        (cqa, {"question": "Q", "choices": ["a"]}, "2 to 10 entries"),
        (cqa, {"question": "Q", "choices": ["a", ""]}, r"choices\[1\]"),
        (sv, ["not", "a", "dict"], "expected an object"),
    ]:
        with pytest.raises(InputError, match=msg):
            ds.format_input(rec)


def test_hub_loaders_on_local_files_in_hub_format(tmp_path):
    esnli_rows = [{"premise": "P1", "hypothesis": "H1", "label": 0, "explanation_1": "e"},
                  {"premise": "P2", "hypothesis": "H2", "label": -1, "explanation_1": "unlabelled"}]
    anli_rows = [{"uid": "u1", "premise": "P", "hypothesis": "H", "label": 2, "reason": "r"}]
    cqa_rows = [{"id": "c1", "question": "Q?", "choices": ["a", "b", "c", "d", "e"], "answer": "c",
                 "abstractive_explanation": "", "extractive_explanation": ""}]
    svamp_rows = [{"ID": "chal-1", "Body": "He has 3 apples.", "Question": "How many?", "Equation": "( 3.0 )",
                   "Answer": 3.0, "Type": "x"}]
    out = {}
    for name, rows in [("esnli", esnli_rows), ("anli1", anli_rows), ("cqa", cqa_rows), ("svamp", svamp_rows)]:
        p = tmp_path / f"{name}.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows))
        out[name] = DATASETS[name].load("test", source="hub", data_files=str(p))
    assert [e.label for e in out["esnli"]] == ["entailment"]  # -1 (unlabelled) dropped
    assert out["anli1"][0].id == "u1" and out["anli1"][0].label == "contradiction"
    assert out["cqa"][0].input.endswith("(e) e") and out["cqa"][0].label == "c"
    assert out["svamp"][0].input == "He has 3 apples.\nHow many?" and out["svamp"][0].id == "chal-1"


def test_generic_dataset_from_jsonl(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"uid": "a", "subject": "Refund", "body": "I was charged twice", "category": "billing"},
        {"uid": "b", "subject": "Crash", "body": "App crashes on start", "category": "bug"}]))
    (tmp_path / "task.yaml").write_text(
        "name: tickets\nfiles: {train: train.jsonl}\ninput_columns: [subject, body]\nlabel_column: category\n"
        "id_column: uid\nanswer_type: label\nlabel_space: [billing, bug, other]\n")
    ds = get_dataset(str(tmp_path / "task.yaml"))
    assert isinstance(ds, GenericDataset)
    exs = ds.load("train")
    assert [e.id for e in exs] == ["a", "b"] and exs[0].input == "Subject: Refund\nBody: I was charged twice"
    r = ds.parse("Charged twice means a billing issue. So the answer is Billing.", exs[0])
    assert r.ok and r.label == "billing" and ds.score(r.label, exs[0])
    assert not ds.parse("So the answer is refund-ish. ", exs[0]).ok
    assert ds.format_input({"subject": "s", "body": "b"}) == "Subject: s\nBody: b"
    with pytest.raises(SplitUnavailable):
        ds.load("test")


def test_generic_dataset_errors_name_the_problem(tmp_path):
    from sbs.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="label_space is required"):
        load_config(GenericDatasetConfig, None, ["name=t", "files={train: x.jsonl}", "input_columns=[a]",
                                                 "label_column=y"])
    with pytest.raises(ConfigError, match="input_columns"):
        load_config(GenericDatasetConfig, None, ["name=t", "files={train: x.jsonl}", "input_columns=[]",
                                                 "label_column=y", "answer_type=text"])
    (tmp_path / "train.jsonl").write_text('{"q": "1+1", "a": "2"}\n{"q": "2+2"\n')
    cfg = GenericDatasetConfig(name="m", files={"train": "train.jsonl"}, input_columns=["q"], label_column="a",
                               answer_type="number")
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        GenericDataset(cfg, tmp_path).load("train")
    (tmp_path / "train.jsonl").write_text('{"q": "1+1", "a": "2"}\n{"q": "2+2"}\n')
    with pytest.raises(ValueError, match=r"row 2: missing column 'a'"):
        GenericDataset(cfg, tmp_path).load("train")


def test_example_round_trip():
    ex = DATASETS["cqa"].load("test", limit=1)[0]
    assert isinstance(ex, Example) and ex.to_row()["field_question"] == ex.fields["question"]


def test_lone_surrogates_in_fields_name_the_field():
    from sbs.datasets import InputError, get_dataset

    with pytest.raises(InputError, match=r"esnli: field 'hypothesis' is not valid Unicode text \(a lone surrogate at "
                                         r"character 3\)"):
        get_dataset("esnli").format_input({"premise": "A dog runs.", "hypothesis": "Dog\ud800 moves."})
    with pytest.raises(InputError, match=r"field 'choices\[2\]' is not valid Unicode"):
        get_dataset("cqa").format_input({"question": "Where?", "choices": ["a", "b", "\udfffc"]})
    assert get_dataset("svamp").format_input({"problem": "Ann has 3 pens \u00e9\U0001f600."})  # real non-ASCII is fine


@pytest.mark.parametrize("answer", ["(a) daydream or (c) get ideas", "(b) orchestra or (e) symphony",
                                    "(a) listen to music and (b) watch television"])
def test_cqa_answer_naming_two_choices_is_rejected_as_ambiguous(answer):
    cqa = DATASETS["cqa"]
    ex = cqa.load("test", limit=1)[0]
    res = cqa.parse(f"People do many things. So the answer is {answer}.", ex)
    assert not res.ok and res.reason == "ambiguous_answer" and "names 2 choices" in res.detail
    one = cqa.parse(f"People do many things. So the answer is (a) {ex.fields['choices'][0]}.", ex)
    assert one.ok and one.label == cqa.normalize_label(ex.fields["choices"][0], ex)


@pytest.mark.parametrize("pred,gold,right", [
    ("(84 / 2)", "( 84.0 / 2.0 )", True), ("42", "( 84.0 / 2.0 )", True), ("41", "42", False),
    ("1,000.", "1000", True), (None, "1", False), (7, "7", False), ("seven", "7", False), ("1", "(", False)])
def test_numeric_answers_score_the_same_on_svamp_and_generic(tmp_path, pred, gold, right):
    from sbs.arith import same_value

    generic = GenericDataset(GenericDatasetConfig(name="m", files={"train": "x.jsonl"}, input_columns=["q"],
                                                  label_column="a", answer_type="number"), tmp_path)
    ex = Example("e", "", gold)
    assert same_value(pred, gold) == DATASETS["svamp"].score(pred, ex) == generic.score(pred, ex) == right
