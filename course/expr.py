"""A tiny, safe arithmetic evaluator for numeric answers written in YAML.

Lesson authors write ``answer: "32000**2 * 4 / 1e9"`` so that the number a
learner is graded against is computed, not typed in. Only numbers, the binary
operators ``+ - * / // % **``, unary ``+``/``-`` and parentheses are accepted.

Limits, so that a typo can never hang or crash the loader (every violation is an
:class:`ExpressionError` saying which limit): at most :data:`MAX_LENGTH`
characters, operations nested at most :data:`MAX_DEPTH` deep, exponents of at
most :data:`MAX_EXPONENT` in size, and every operand and intermediate result
within the range of a float (about 1.8e308), checked *before* a power is
computed, so ``((10**1000)**1000)**1000`` is refused at once.
"""

from __future__ import annotations

import ast
import math
import operator
import sys

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
MAX_LENGTH = 500  # characters of an expression
MAX_DEPTH = 100  # nested operations (a chain a + b + c + ... nests one per operator)
MAX_EXPONENT = 1000  # |exponent| of a power
MAX_MAGNITUDE = sys.float_info.max  # |operand| and |intermediate result|
_LOG10_MAX = math.log10(MAX_MAGNITUDE)


class ExpressionError(ValueError):
    """The text is not a plain arithmetic expression, or breaks one of its limits."""


def evaluate(text: str | int | float) -> float:
    """Return the value of an arithmetic expression (or a plain number).

    >>> evaluate("32000**2 * 4 / 1e9")
    4.096
    """
    if isinstance(text, bool):
        raise ExpressionError("a boolean is not a number")
    if isinstance(text, (int, float)):
        value = float(_checked(text)) if isinstance(text, int) else text
    else:
        source = str(text).strip()
        if len(source) > MAX_LENGTH:
            raise ExpressionError(f"expression is {len(source)} characters long; at most {MAX_LENGTH} are allowed")
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"not an arithmetic expression: {source!r}") from exc
        except (ValueError, MemoryError, RecursionError) as exc:  # e.g. a literal with too many digits
            raise ExpressionError(f"cannot read {source[:40]!r}: {type(exc).__name__}: {exc}") from exc
        value = float(_eval(tree.body, 0))
    if not math.isfinite(value):
        raise ExpressionError(f"expression {text!r} is not finite")
    return value


def _checked(x: int | float) -> int | float:
    if isinstance(x, complex) or not isinstance(x, (int, float)):
        raise ExpressionError(f"the result is not a real number ({x!r})")
    if abs(x) > MAX_MAGNITUDE:
        raise ExpressionError(f"number too large: beyond ±{MAX_MAGNITUDE:.3g}, the largest a float can hold")
    return x


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exponent:.6g} too large: at most ±{MAX_EXPONENT} is allowed")
    if base != 0 and abs(base) != 1 and exponent > 0:
        digits = exponent * math.log10(abs(base))  # log10 of |result|, before computing it
        if digits > _LOG10_MAX:
            raise ExpressionError(f"number too large: {base:.6g}**{exponent:.6g} has about {math.ceil(digits)} digits; "
                                  f"results must stay within ±{MAX_MAGNITUDE:.3g}")
    return base**exponent


def _eval(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"expression nested more than {MAX_DEPTH} operations deep")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        try:
            if isinstance(node.op, ast.Pow):
                return _checked(_power(left, right))
            return _checked(_BINARY[type(node.op)](left, right))
        except (ZeroDivisionError, OverflowError) as exc:
            raise ExpressionError(str(exc)) from exc
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    raise ExpressionError(f"only numbers and + - * / // % ** ( ) are allowed, found {ast.dump(node)[:40]}")
