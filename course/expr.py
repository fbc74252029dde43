"""A tiny, safe arithmetic evaluator for numeric answers written in YAML.

Lesson authors write ``answer: "32000**2 * 4 / 1e9"`` so that the number a
learner is graded against is computed, not typed in. Only numbers, the binary
operators ``+ - * / // % **``, unary ``+``/``-`` and parentheses are accepted.
"""

from __future__ import annotations

import ast
import math
import operator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 1000


class ExpressionError(ValueError):
    """The text is not a plain arithmetic expression."""


def evaluate(text: str | int | float) -> float:
    """Return the value of an arithmetic expression (or a plain number).

    >>> evaluate("32000**2 * 4 / 1e9")
    4.096
    """
    if isinstance(text, bool):
        raise ExpressionError("a boolean is not a number")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            tree = ast.parse(str(text).strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"not an arithmetic expression: {text!r}") from exc
        value = float(_eval(tree.body))
    if not math.isfinite(value):
        raise ExpressionError(f"expression {text!r} is not finite")
    return value


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ExpressionError("exponent too large")
        try:
            return _BINARY[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError) as exc:
            raise ExpressionError(str(exc)) from exc
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ExpressionError(f"only numbers and + - * / ** ( ) are allowed, found {ast.dump(node)[:40]}")
