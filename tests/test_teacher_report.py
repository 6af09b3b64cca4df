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
