"""What a personalization offer names that the rules do not declare.

An offer reads the served profile through maps (`attributes.lifetime_value`), and its
entry criterion may be an audience, so an attribute or audience name mistyped in the
personalization file compiles, runs, and never matches: the offer is silently never
returned. The API cannot see this (it does not load the rules), so `traitflow
validate`, which loads both files, checks every name an offer reads against the names
the rules declare for the service's entity.

The expressions themselves are compiled, and type-checked, by the compiler the rules
use (`attributes.expressions`), as the API compiles them: over maps of `dyn` values.
That compiler leaves a map's keys to run time, so what is added here is only that:
the keys read from the `attributes` map, found in the expression's syntax tree.
Their values are not given the rules' CEL types: the served JSON holds a `sum` of
ints as an int where the rules type it `double`, so those types would refuse
expressions that work.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from difflib import get_close_matches

from attributes.expressions.errors import describe_position
from attributes.expressions.macros import MACROS
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
from attributes.expressions.parser import parse
from attributes.offers import OfferSpec, ServiceSpec
from attributes.ruleset import RuleSet

#: the map of the served view that holds the profile's attributes
ATTRIBUTES = "attributes"


def undeclared(spec: ServiceSpec, rules: RuleSet) -> list[tuple[int, str]]:
    """(offer index, problem) for each name an offer of the service reads that `rules`
    do not declare for its entity: its `audience`, and each key of `attributes` its
    condition or attributes read (once per expression, at its first use). The offers
    must compile (`compile_service` checks them first)."""
    declared = rules.of(spec.entity)
    attributes = set(declared.names)
    audiences = [audience.name for audience in declared.audiences]
    problems: list[tuple[int, str]] = []
    for index, offer in enumerate(spec.offers):
        found = []
        if offer.audience is not None and offer.audience not in audiences:
            hint = _hint(offer.audience, audiences)
            found.append(f"the rules declare no {spec.entity} audience {offer.audience!r}{hint}")
        for where, source in _sources(offer).items():
            seen: set[str] = set()
            for key, offset in keys_read(parse(source), ATTRIBUTES):
                if key in attributes or key in seen:
                    continue
                seen.add(key)
                found.append(
                    f"{where}: the rules declare no {spec.entity} attribute {key!r} "
                    f"at {describe_position(source, offset)}{_hint(key, attributes)}"
                )
        problems.extend((index, f"offer {offer.name!r}: {problem}") for problem in found)
    return problems


def _sources(offer: OfferSpec) -> dict[str, str]:
    """An offer's CEL sources, each named as `compile_offer`'s errors name it."""
    sources = {"condition": offer.condition} if offer.condition is not None else {}
    sources.update((f"attribute {name!r}", source) for name, source in offer.attributes.items())
    return sources


def keys_read(node: Node, variable: str) -> Iterator[tuple[str, int]]:
    """(key, offset) of each `variable.key` and `variable["key"]` in the tree, in
    source order. A macro that binds `variable` to its items (`[m].all(attributes,
    ...)`) hides the map in its body."""
    match node:
        case Select(operand=Ident(name=name), field=field) if name == variable:
            yield field, node.offset
            return
        case Index(operand=Ident(name=name), index=Literal(value=str() as key)) if name == variable:
            yield key, node.offset
            return
        case Call(function=function, target=target, args=(Ident(name=bound), *_)) if (
            function in MACROS and function != "has" and bound == variable
        ):
            if target is not None:
                yield from keys_read(target, variable)
            return
    for child in _children(node):
        yield from keys_read(child, variable)


def _children(node: Node) -> tuple[Node, ...]:
    match node:
        case Select(operand=operand) | Unary(operand=operand):
            return (operand,)
        case Index(operand=operand, index=index):
            return operand, index
        case Call(target=target, args=args):
            return args if target is None else (target, *args)
        case ListLiteral(items=items):
            return items
        case MapLiteral(entries=entries):
            return tuple(part for entry in entries for part in entry)
        case Binary(left=left, right=right):
            return left, right
        case Conditional(condition=condition, if_true=if_true, if_false=if_false):
            return condition, if_true, if_false
    return ()  # a literal or a variable


def _hint(name: str, declared: Collection[str]) -> str:
    """The compiler's hint for an unknown variable, for a name the rules do not declare."""
    close = get_close_matches(name, list(declared), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
