"""Safe arithmetic for the calculator agent: the expression is parsed, never evaluated
as code.

Only numbers, ``+ - * / // % **``, unary signs and parentheses are allowed; the
expression, its nesting, exponents and intermediate results are bounded, so no input
can make it run long or build a huge number.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Final

MAX_EXPRESSION_CHARS: Final = 256
MAX_DEPTH: Final = 32
MAX_EXPONENT: Final = 1000
MAX_MAGNITUDE: Final = 1e300

_BINARY: Final[dict[type[ast.operator], Callable[[float, float], float]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class CalculationError(ValueError):
    """The expression is not arithmetic this calculator takes; the message says why."""


def calculate(expression: str) -> float | int:
    """The value of ``expression``; raises :class:`CalculationError` otherwise."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculationError(f"at most {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculationError(f"not an arithmetic expression: {expression!r}") from None
    value = _value(tree.body, 0)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _value(node: ast.AST, depth: int) -> float | int:
    if depth > MAX_DEPTH:
        raise CalculationError("nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        number: float | int = node.value  # type: ignore[assignment]  # checked just above
        return _bounded(number)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _value(node.operand, depth + 1)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _value(node.left, depth + 1)
        right = _value(node.right, depth + 1)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculationError(f"exponents are at most {MAX_EXPONENT}")
        if (
            isinstance(node.op, ast.Pow)
            and abs(left) > 1
            and abs(right) * math.log10(abs(left)) > 300
        ):
            raise CalculationError("the result would be too large")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        except OverflowError:
            raise CalculationError("the result would be too large") from None
    raise CalculationError("only numbers, + - * / // % **, signs and parentheses are allowed")


def _bounded(value: float | int | complex) -> float | int:
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise CalculationError("the result is not a real number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculationError("the result would be too large")
    return value
