"""Compiles an expression's syntax tree, once, into one closure that evaluates it.

`compile_expression` is the entry point: parse, then type-check and compile each node
in one pass, bottom-up; each node's compiler (variables.py, access.py, operators.py,
logic.py, functions.py, macros.py) sees its operands' static types and closures,
refuses what can never work, and builds the cheapest closure for what can.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attributes.expressions.access import compile_index, compile_list, compile_map, compile_select
from attributes.expressions.compiled import Activation, Compiled, Evaluator, Scope, constant
from attributes.expressions.errors import EvaluationError, ExpressionError
from attributes.expressions.functions import compile_call
from attributes.expressions.logic import compile_conditional, compile_logical
from attributes.expressions.macros import MACROS, compile_macro
from attributes.expressions.nodes import (
    Binary,
    Call,
    Conditional,
    Ident,
    Index,
    ListLiteral,
    Literal,
    MapLiteral,
    Node,
    Select,
    Unary,
)
from attributes.expressions.operators import compile_binary, compile_unary
from attributes.expressions.parser import parse
from attributes.expressions.types import BOOL, DOUBLE, INT, NULL, STRING, CelType, assignable
from attributes.expressions.values import PYTHON_TYPES, kind_of
from attributes.expressions.variables import compile_variable

_LITERAL_TYPES: dict[type, CelType] = {
    bool: BOOL,
    int: INT,
    float: DOUBLE,
    str: STRING,
    type(None): NULL,
}


@dataclass(frozen=True)
class Expression:
    """A compiled expression: call `evaluate(activation)` once per event."""

    source: str
    type: CelType
    """The static result type; DYN when known at run time only."""
    names: frozenset[str]
    """The declared variables the expression reads, for ordering derived attributes."""
    evaluate: Evaluator
    """Variable name -> value, to the expression's value; raises EvaluationError."""


def compile_expression(
    source: str, variables: Mapping[str, CelType], expect: CelType | None = None
) -> Expression:
    """Compile `source`, whose free variables are `variables`, or raise ExpressionError.

    With `expect`, an expression whose static type can never be `expect` is refused,
    and a DYN-typed one is checked per evaluation (a where filter that yields an int
    raises EvaluationError instead of being taken as true).
    """
    scope = Scope(source, variables)
    try:
        compiled = compile_node(parse(source), scope)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    evaluate = _expecting(compiled, expect)
    return Expression(source, compiled.type, frozenset(scope.reads), evaluate)


def compile_node(node: Node, scope: Scope) -> Compiled:
    match node:
        case Literal(value=value):
            return constant(value, _LITERAL_TYPES[type(value)])
        case Ident():
            return compile_variable(node, scope)
        case Select(operand=operand):
            return compile_select(node, compile_node(operand, scope), scope)
        case Index(operand=operand, index=index):
            return compile_index(
                node, compile_node(operand, scope), compile_node(index, scope), scope
            )
        case Call(function=function) if function in MACROS:
            return compile_macro(node, scope, compile_node)
        case Call(target=target, args=args):
            receiver = [] if target is None else [target]
            operands = [compile_node(operand, scope) for operand in (*receiver, *args)]
            return compile_call(node, operands, scope)
        case ListLiteral(items=items):
            return compile_list([compile_node(item, scope) for item in items])
        case MapLiteral(entries=entries):
            compiled_entries = [
                (compile_node(key, scope), compile_node(value, scope)) for key, value in entries
            ]
            return compile_map(node, compiled_entries, scope)
        case Unary(operand=operand):
            return compile_unary(node, compile_node(operand, scope), scope)
        case Binary(operator=operator, left=left, right=right):
            compile_operator = compile_logical if operator in ("&&", "||") else compile_binary
            return compile_operator(
                node, compile_node(left, scope), compile_node(right, scope), scope
            )
        case Conditional(condition=condition, if_true=if_true, if_false=if_false):
            return compile_conditional(
                node,
                compile_node(condition, scope),
                compile_node(if_true, scope),
                compile_node(if_false, scope),
                scope,
            )


def _expecting(compiled: Compiled, expect: CelType | None) -> Evaluator:
    if expect is None or expect.is_dyn:
        return compiled.evaluate
    if not assignable(compiled.type, expect):
        raise ExpressionError(f"expected {_article(expect)} expression, got {compiled.type}")
    if not compiled.type.is_dyn:
        return compiled.evaluate
    evaluate, python_type = compiled.evaluate, PYTHON_TYPES[expect.name]

    def checked(activation: Activation) -> Any:
        value = evaluate(activation)
        if type(value) is python_type:
            return value
        raise EvaluationError(f"expected {_article(expect)} result, got {kind_of(value)}")

    return checked


def _article(expected: CelType) -> str:
    return f"{'an' if str(expected)[0] in 'aeiou' else 'a'} {expected}"
