"""Compiles CEL's macros: `has(a.b)` and the list/map comprehensions.

`xs.all(x, p)`, `exists`, `exists_one`, `map(x, t)`, `map(x, p, t)` and `filter(x, p)`
iterate over a list's elements or a map's keys. Each evaluation copies the
activation into a dict once and rebinds `x` in it per element, so the body's
closures read `x` like any variable. `all` and `exists` absorb errors as `&&` and
`||` do (`[0, 1].exists(x, 1 / x == 1)` is true); the others fail on the first error.

Comprehensions are the one way an expression's cost can grow faster than its text:
nested ones multiply (three nested over a 100-element list are a million steps, and
two over an event's 60,000-element list billions), and a `map` can build values
far larger than the event. A worker evaluates filters inside its batches, so such an
expression would stall it on every event, or on one hostile event. Each evaluation
of an outermost comprehension therefore has a budget, `MAX_ITERATIONS`, shared with
the comprehensions nested in it: each is charged the length of what it iterates
over, and `map` the length of each list or map it builds and one per KiB of each
string. Past the budget the evaluation fails (an `EvaluationError`: the filter does
not match, a derived attribute is null), in time bounded by the budget (milliseconds),
whatever the data: a worker evaluates filters on every event of its batches, and a
backfill on every event of the history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attributes.expressions.compiled import Activation, Compiled, Evaluator, Scope
from attributes.expressions.errors import EvaluationError
from attributes.expressions.nodes import Call, Ident, Node, Select
from attributes.expressions.types import BOOL, list_of
from attributes.expressions.values import has_field, iteration_range, no_overload, require_bool

CompileNode = Callable[[Node, Scope], Compiled]

MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})

_ARITIES = {"all": (2,), "exists": (2,), "exists_one": (2,), "filter": (2,), "map": (2, 3)}

#: Iterates over the range bound to a variable: activation -> (bindings, elements).
Iteration = Callable[[Activation], tuple[dict[str, Any], Iterable[Any]]]


def compile_macro(node: Call, scope: Scope, compile_node: CompileNode) -> Compiled:
    if node.function == "has":
        return _has(node, scope, compile_node)
    name, target = node.function, _target(node, scope)
    variable = _variable(node, scope)
    iterated = compile_node(target, scope)
    if iterated.type.name not in ("list", "map", "dyn"):
        raise scope.error(f"no matching overload for '{name}' on {iterated.type}", node.offset)
    element_type = iterated.type.element
    body_scope = scope.with_macro_variable(variable, element_type)
    body = [compile_node(argument, body_scope) for argument in node.args[1:]]
    predicates = body[:-1] if name == "map" else body
    for condition in predicates:
        if condition.type != BOOL and not condition.type.is_dyn:
            message = f"{name}() needs a bool predicate, got {condition.type}"
            raise scope.error(message, node.offset)
    iteration = _iteration(name, iterated.evaluate)
    evaluators = [part.evaluate for part in body]
    if name == "map":
        transform = body[-1]
        predicate = evaluators[0] if len(body) == 2 else None
        return Compiled(
            list_of(transform.type), _map(iteration, variable, predicate, transform.evaluate)
        )
    if name == "filter":
        return Compiled(list_of(element_type), _filter(iteration, variable, evaluators[0]))
    quantifier = {"all": _all, "exists": _exists, "exists_one": _exists_one}[name]
    return Compiled(BOOL, quantifier(iteration, variable, evaluators[0]))


def _target(node: Call, scope: Scope) -> Node:
    if node.target is None:
        message = f"{node.function}() is called on a list or map: xs.{node.function}(x, ...)"
        raise scope.error(message, node.offset)
    return node.target


def _variable(node: Call, scope: Scope) -> str:
    """The name of the macro's iteration variable, after checking the argument count."""
    name, arities = node.function, _ARITIES[node.function]
    if len(node.args) not in arities:
        counts = " or ".join(map(str, arities))
        raise scope.error(f"{name}() takes {counts} arguments, got {len(node.args)}", node.offset)
    variable = node.args[0]
    if not isinstance(variable, Ident):
        raise scope.error(f"{name}() needs a variable name as its first argument", node.offset)
    return variable.name


def _has(node: Call, scope: Scope, compile_node: CompileNode) -> Compiled:
    if node.target is not None or len(node.args) != 1 or not isinstance(node.args[0], Select):
        raise scope.error("has() takes one field selection, as in has(a.b)", node.offset)
    field = node.args[0].field
    operand = compile_node(node.args[0].operand, scope)
    if operand.type.name != "map" and not operand.type.is_dyn:
        raise scope.error(f"has() cannot test field '{field}' on {operand.type}", node.offset)
    evaluate = operand.evaluate
    return Compiled(BOOL, lambda activation: has_field(evaluate(activation), field))


#: the elements (and built lengths) one outermost comprehension may go through,
#: those nested in it included
MAX_ITERATIONS = 10_000
#: where the budget left travels in the bindings (no CEL name can read it)
_BUDGET = "\0budget"


def _iteration(macro: str, iterated: Evaluator) -> Iteration:
    def iterate(activation: Activation) -> tuple[dict[str, Any], Iterable[Any]]:
        bindings = dict(activation)
        elements = iteration_range(iterated(activation), macro)
        budget = bindings.get(_BUDGET)
        if budget is None:  # an outermost comprehension: a budget of its own
            budget = bindings[_BUDGET] = [MAX_ITERATIONS]
        _charge(budget, len(elements), macro)
        return bindings, elements

    return iterate


def _charge(budget: list[int], steps: int, macro: str) -> None:
    budget[0] -= steps
    if budget[0] < 0:
        raise EvaluationError(
            f"{macro}() went past {MAX_ITERATIONS:,} elements in one evaluation "
            "(nested comprehensions count together)"
        )


def _deciding(macro: str, decisive: bool) -> Callable[[Iteration, str, Evaluator], Evaluator]:
    """`all` (decided by a false element) and `exists` (by a true one): like `&&` and
    `||`, a decisive element wins even if the predicate fails for others."""

    def quantifier(iteration: Iteration, variable: str, predicate: Evaluator) -> Evaluator:
        def evaluate(activation: Activation) -> bool:
            bindings, elements = iteration(activation)
            budget = bindings[_BUDGET]
            error: EvaluationError | None = None
            for element in elements:
                bindings[variable] = element
                try:
                    result = predicate(bindings)
                except EvaluationError as failure:
                    if budget[0] < 0:
                        raise  # spent: no element may decide any more
                    error = failure
                    continue
                if result is decisive:
                    return bool(decisive)  # bool(): after `is`, mypy types it Any
                if result is not (not decisive):  # not a bool at all
                    error = no_overload(macro, result)
            if error is not None:
                raise error
            return not decisive

        return evaluate

    return quantifier


_all = _deciding("all", decisive=False)
_exists = _deciding("exists", decisive=True)


def _exists_one(iteration: Iteration, variable: str, predicate: Evaluator) -> Evaluator:
    def evaluate(activation: Activation) -> bool:
        bindings, elements = iteration(activation)
        count = 0
        for element in elements:
            bindings[variable] = element
            count += require_bool(predicate(bindings), "exists_one")
        return count == 1

    return evaluate


def _filter(iteration: Iteration, variable: str, predicate: Evaluator) -> Evaluator:
    def evaluate(activation: Activation) -> list[Any]:
        bindings, elements = iteration(activation)
        kept = []
        for element in elements:
            bindings[variable] = element
            if require_bool(predicate(bindings), "filter"):
                kept.append(element)
        return kept

    return evaluate


def _map(
    iteration: Iteration, variable: str, predicate: Evaluator | None, transform: Evaluator
) -> Evaluator:
    def evaluate(activation: Activation) -> list[Any]:
        bindings, elements = iteration(activation)
        budget = bindings[_BUDGET]
        mapped = []
        for element in elements:
            bindings[variable] = element
            if predicate is None or require_bool(predicate(bindings), "map"):
                value = transform(bindings)
                if isinstance(value, list | dict):  # what it builds is kept
                    _charge(budget, len(value), "map")
                elif isinstance(value, str):  # a reference, or a copy (`s + s`)
                    _charge(budget, len(value) >> 10, "map")
                mapped.append(value)
        return mapped

    return evaluate
