import json

from sbs.cli import main
from sbs.teacher_report import report


def test_report_counts_add_up_and_match_the_parser():
    r = report("svamp", "test")
    assert r["examples"] == 200 and r["parsed"] + r["rejected"] == 200
    assert r["rejected_by_reason"] == {"no_answer_marker": 2, "unparseable_equation": 5}
    assert 0.7 < r["teacher_accuracy"] < 0.85 and r["rationale_words_mean"] > 5


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["teacher-report", "--dataset", "anli1", "--split", "test", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "teacher acc" in text and "anli1" in text
    rows = json.loads(out.read_text())
    assert rows[0]["examples"] == 1000 and rows[0]["parsed"] + rows[0]["rejected"] == 1000


def test_cli_names_an_unavailable_split(capsys):
    assert main(["teacher-report", "--dataset", "esnli", "--split", "train"]) == 2
    assert "train on 'valid' explicitly" in capsys.readouterr().err


def test_help_lists_the_stages(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("teacher-report", "rationales", "train", "eval", "serve", "sweep"):
        assert cmd in out


def test_paper_rule_on_handmade_rows():
    """The paper's label rule (google-research/distilling-step-by-step data_utils.py), row by row."""
    from sbs.datasets import Example
    from sbs.teacher_report import PAPER_RULES, _paper_correct

    cases = [  # dataset, teacher text, gold, right by the paper's rule
        ("anli1", "A is B. So the answer is entailment.\n\nPremise: next", "entailment", True),
        ("anli1", "A is B, so the answer is entailment.", "entailment", False),  # lower-case: not found
        ("anli1", "A is B. The answer is contradiction.", "contradiction", False),
        ("cqa", "Only Michigan is cold. So the answer is (c) michigan.\n\nQ: next", "michigan", True),
        ("cqa", "Only Michigan is cold. So the answer is (c) Michigan.", "michigan", False),  # case-sensitive
        ("cqa", "So the answer is (a) daydream or (c) get ideas.", "daydream", False),
        ("esnli", "A dog is an animal.\nAnswer: entailment\n\nPremise: x", "entailment", True),
        ("esnli", "A dog is an animal.\nAnswer:entailment", "entailment", False),
        ("svamp", "12 - 2 = 10. The answer is (12 - 2).\n\nQ: next", "( 12.0 - 2.0 )", True),
        ("svamp", "The answer is (12 - 2) - 7.", "( ( 12.0 - 2.0 ) - 7.0 )", False),  # only the (...) span
        ("svamp", "The answer is 10.", "( 12.0 - 2.0 )", False),  # no parentheses
    ]
    for name, text, gold, right in cases:
        label = PAPER_RULES[name](text)
        assert (label is not None and _paper_correct(label, Example("x", "", gold), name)) == right, (name, text, label)
    assert PAPER_RULES["cqa"]("no marker at all") is None  # where the reference code raises


def test_report_paper_rule_accuracy_and_why_it_differs(capsys):
    r = report("svamp", "test")
    assert r["paper_rule_accuracy"] == 0.74 and r["teacher_accuracy"] == 0.775
    assert round((r["teacher_accuracy"] * 200 - r["right_only_ours"] + r["right_only_paper_rule"]) / 200, 4) == 0.74
    assert main(["teacher-report", "--dataset", "svamp", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "paper-rule acc" in out and "only the parenthesised span" in out


def test_generic_dataset_reports_under_its_name(tmp_path):
    from test_teacher_prompts import _generic

    r = report(_generic(tmp_path, None), "train")
    assert r["dataset"] == "tickets" and r["examples"] == 6 == r["parsed"] and r["teacher_accuracy"] == 1.0
    assert r["paper_rule_accuracy"] is None  # the paper has no rule for a user's dataset
