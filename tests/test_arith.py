import pytest

from sbs.arith import MAX_CHARS, ArithError, evaluate, try_evaluate

GOOD = [
    ("( 84.0 / 2.0 )", 42.0),
    ("84 / 2", 42.0),
    ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0),
    ("10.0 - ( 6.0 + 3.0 )", 1.0),
    ("2 * 3 + 4", 10.0),
    ("2 * (3 + 4)", 14.0),
    ("-3 + 5", 2.0),
    ("--3", 3.0),
    ("1,000 / 4", 250.0),
    ("42", 42.0),
    ("42.", 42.0),
    (".5 * 4", 2.0),
    ("  7  ", 7.0),
    ("(((1)))", 1.0),
    ("8 / 4 / 2", 1.0),
    ("8 - 4 - 2", 2.0),
]

BAD = [
    "",
    "   ",
    "__import__('os').system('echo pwned')",
    "os.system('ls')",
    "2 ** 10",
    "2 ^ 3",
    "x * 2",
    "(2 * x)",
    "((28 - 13) and (28 - 15))",
    "1 / 0",
    "(1 + 2",
    "1 + 2)",
    "1 +",
    "* 3",
    "3 3",
    "1e5",
    "open('/etc/passwd')",
    "lambda: 1",
    "(" * 40 + "1" + ")" * 40,
    "1+" * 200 + "1",
    "９ + 1",  # full-width digit: not ASCII arithmetic
    "1\x00+1",
]


@pytest.mark.parametrize("expr,value", GOOD)
def test_good(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", BAD)
def test_bad_raises_arith_error_and_try_returns_none(expr):
    with pytest.raises(ArithError):
        evaluate(expr)
    assert try_evaluate(expr) is None


def test_limits_and_types():
    assert try_evaluate("1" * (MAX_CHARS + 1)) is None
    assert try_evaluate(None) is None  # type: ignore[arg-type]
    assert try_evaluate(12) is None  # type: ignore[arg-type]
    assert try_evaluate("9" * 200 + " * " + "9" * 50) is not None  # big but finite


def test_never_executes(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    assert try_evaluate(f"__import__('pathlib').Path('{marker}').touch()") is None
    assert not marker.exists()
