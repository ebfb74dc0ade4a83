"""CEL arithmetic on Python numbers: 64-bit ints that raise on overflow, IEEE doubles.

Python ints never overflow, and its `//` and `%` round toward negative infinity;
CEL's ints are 64-bit, overflow is an error, `/` truncates toward zero and `%`
takes the sign of the dividend (as in C and Go). Python raises on a double division
by zero where CEL follows IEEE 754 (`1.0 / 0.0` is infinity), and Python orders NaN
(every comparison false) where CEL refuses to.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attributes.expressions.errors import EvaluationError

INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def add_int(first: int, second: int) -> int:
    result = first + second
    if INT_MIN <= result <= INT_MAX:
        return result
    raise _overflow(first, "+", second)


def subtract_int(first: int, second: int) -> int:
    result = first - second
    if INT_MIN <= result <= INT_MAX:
        return result
    raise _overflow(first, "-", second)


def multiply_int(first: int, second: int) -> int:
    result = first * second
    if INT_MIN <= result <= INT_MAX:
        return result
    raise _overflow(first, "*", second)


def divide_int(dividend: int, divisor: int) -> int:
    if divisor == 0:
        raise EvaluationError("division by zero")
    quotient = abs(dividend) // abs(divisor)
    result = quotient if (dividend < 0) == (divisor < 0) else -quotient
    if result <= INT_MAX:
        return result
    raise _overflow(dividend, "/", divisor)


def modulo_int(dividend: int, divisor: int) -> int:
    if divisor == 0:
        raise EvaluationError("modulo by zero")
    if dividend == INT_MIN and divisor == -1:
        # the remainder is 0, but computing it overflows in 64 bits: CEL makes it an error
        raise _overflow(dividend, "%", divisor)
    remainder = abs(dividend) % abs(divisor)
    return remainder if dividend >= 0 else -remainder


def negate_int(value: int) -> int:
    if value != INT_MIN:
        return -value
    raise EvaluationError(f"int overflow: -({value})")


def divide_double(dividend: float, divisor: float) -> float:
    try:
        return dividend / divisor
    except ZeroDivisionError:
        if dividend == 0.0 or math.isnan(dividend):
            return math.nan
        return math.copysign(math.inf, dividend) * math.copysign(1.0, divisor)


def ordering_of_doubles(compare: Callable[[float, float], bool]) -> Callable[[float, float], bool]:
    """`compare` (`<`, ...) for doubles, where NaN is an error, as in cel-go: IEEE 754 makes
    every comparison with NaN false, which would break `a <= b == !(a > b)`."""

    def compare_doubles(first: float, second: float) -> bool:
        if compare(first, second):
            return True
        if first == first and second == second:  # neither is NaN
            return False
        raise EvaluationError("NaN values cannot be ordered")

    return compare_doubles


def _overflow(first: int, symbol: str, second: int) -> EvaluationError:
    return EvaluationError(f"int overflow: {first} {symbol} {second}")
