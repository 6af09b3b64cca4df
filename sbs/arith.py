"""A safe arithmetic evaluator for SVAMP equations.

Model and teacher output is never executed: this is a small recursive-descent parser over
numbers, + - * / and parentheses only. Anything else (names, calls, `**`, attribute access,
over-long or too deeply nested input) raises `ArithError`, which scorers turn into "wrong".
"""
from __future__ import annotations

import math
import re

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_TOKENS = 128

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/()]))", re.ASCII)


class ArithError(ValueError):
    pass


def _tokenize(expr: str) -> list[str]:
    if len(expr) > MAX_CHARS:
        raise ArithError(f"expression longer than {MAX_CHARS} characters")
    # Accept the forms models write around numbers: thousands separators, a trailing period.
    expr = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expr, flags=re.ASCII).strip().rstrip(".").strip()
    tokens: list[str] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            if expr[pos:].strip() == "":
                break
            raise ArithError(f"unexpected character {expr[pos]!r} at position {pos}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise ArithError(f"more than {MAX_TOKENS} tokens")
    if not tokens:
        raise ArithError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.t = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ArithError("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self, depth: int) -> float:
        val = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            val = val + rhs if op == "+" else val - rhs
        return val

    def term(self, depth: int) -> float:
        val = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                val *= rhs
            else:
                if rhs == 0:
                    raise ArithError("division by zero")
                val /= rhs
        return val

    def factor(self, depth: int) -> float:
        if depth > MAX_DEPTH:
            raise ArithError(f"nested deeper than {MAX_DEPTH}")
        tok = self.take()
        if tok in ("+", "-"):
            v = self.factor(depth + 1)
            return v if tok == "+" else -v
        if tok == "(":
            v = self.expr(depth + 1)
            if self.take() != ")":
                raise ArithError("missing closing parenthesis")
            return v
        if tok in (")", "*", "/"):
            raise ArithError(f"unexpected {tok!r}")
        return float(tok)


def evaluate(expr: str) -> float:
    """Value of an arithmetic expression; raises ArithError on anything that is not one."""
    if not isinstance(expr, str):
        raise ArithError(f"expected a string, got {type(expr).__name__}")
    p = _Parser(_tokenize(expr))
    val = p.expr(0)
    if p.peek() is not None:
        raise ArithError(f"unexpected {p.peek()!r} after a complete expression")
    if not math.isfinite(val):
        raise ArithError("result is not finite")
    return val


def try_evaluate(expr: str) -> float | None:
    try:
        return evaluate(expr)
    except (ArithError, ValueError, OverflowError, RecursionError):
        return None


def numbers_equal(a: float, b: float, rel: float = 1e-4, abs_tol: float = 1e-4) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def same_value(pred: object, gold: object) -> bool:
    """Numeric answer scoring (SVAMP, generic `answer_type: number`): both sides evaluate, to equal
    values. Never raises: a prediction that is not an arithmetic expression is wrong."""
    p, g = try_evaluate(pred), try_evaluate(gold)  # type: ignore[arg-type]
    return p is not None and g is not None and numbers_equal(p, g)
