"""Audiences: named CEL conditions over a profile's attributes and traits.

An audience is declared in the rule file's `audiences:` section, next to the
attributes it reads, so that one file says what a profile is and which audiences it
is in, and `traitflow validate` checks both:

    audiences:
      - name: recent_buyers
        description: Ordered in the last 7 days.
        entity: user
        condition: orders_7d > 0 && traits.plan != "free"

A condition sees the profile's attributes by name, as derived attributes do (each
with its CEL type, so that type errors show at load), and its merged traits as the
map `traits` (an attribute named `traits` hides it), and the processing time as the
timestamp `now` (`attributes.clock`). A condition that cannot be
evaluated for a profile (a null compared with a number, a missing trait) is false
for it: the profile is not a member, as a `where` filter does not match.

Membership is evaluated from the rendered attribute values every time a profile's
view is written (`streams.rendering`), including when its windows move without an
event, so an audience over a window is left on time. The previous membership is kept
in the profile state, which makes an enter or an exit visible to the write that
causes it (`membership_change`).

A write that follows a render of the same state evaluates again only the conditions
that read something that changed (`attributes.reevaluation`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
import yaml

from attributes.expressions import (
    BOOL,
    DYN,
    STRING,
    TIMESTAMP,
    CelType,
    EvaluationError,
    Expression,
    ExpressionError,
    compile_expression,
    map_of,
)
from attributes.specs import NOW, identifier

#: the variable a condition reads the profile's merged traits from
TRAITS = "traits"


class AudienceSpec(pydantic.BaseModel):
    """One audience as written in the rule file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    entity: str = "user"
    #: a CEL expression over the profile's attributes and `traits`; true: a member
    condition: str

    @pydantic.field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        return identifier(name)


@dataclass(frozen=True, slots=True)
class Audience:
    name: str
    entity: str
    condition: Expression
    description: str = ""

    def includes(self, variables: Mapping[str, Any]) -> bool:
        """Whether a profile whose condition variables are `variables` is a member; a
        condition that fails on them is false."""
        try:
            return self.condition.evaluate(variables) is True
        except EvaluationError:
            return False


@dataclass(frozen=True, slots=True)
class AudienceProblem:
    """A problem of one audience of the rule file (`attributes.rules` reports it)."""

    line: int
    name: str | None
    problem: str


def section(root: yaml.MappingNode, data: Mapping[str, Any]) -> list[tuple[Any, int]]:
    """The items of a rule file's `audiences:` list (absent: none), each with its line;
    `root` is the file's composed YAML, `data` the file loaded. A section that is not
    a list is one item, the section, which is then no audience."""
    nodes = [value for name, value in root.value if name.value == "audiences"]
    if not nodes or data.get("audiences") is None:
        return []
    items = data["audiences"]
    if not isinstance(items, list):
        return [(items, nodes[-1].start_mark.line + 1)]
    return list(zip(items, [node.start_mark.line + 1 for node in nodes[-1].value], strict=True))


def compile_audience(spec: AudienceSpec, attributes: Mapping[str, CelType]) -> Audience:
    """Compile an audience's condition against the CEL types of its entity's
    attributes; raises ExpressionError (e.g. a condition that is not a bool)."""
    variables: dict[str, CelType] = {TRAITS: map_of(STRING, DYN), NOW: TIMESTAMP}
    variables.update(attributes)
    condition = compile_expression(spec.condition, variables, expect=BOOL)
    return Audience(spec.name, spec.entity, condition, spec.description)


def parse_audiences(
    items: Sequence[tuple[Any, int]],
    attributes: Mapping[str, Mapping[str, CelType]],
    entities: Collection[str] | None,
) -> tuple[list[Audience], list[AudienceProblem]]:
    """The audiences of a rule file's `audiences:` list, given as (item, line) pairs,
    and every problem found. `attributes`: entity -> its attributes' CEL types;
    `entities`: those declared (None: any)."""
    compiled: list[Audience] = []
    problems: list[AudienceProblem] = []
    seen: dict[str, int] = {}
    for raw, line in items:
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) else None
        try:
            spec = AudienceSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                location = ".".join(str(part) for part in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                text = f"{location}: {message}" if location else message
                problems.append(AudienceProblem(line, label, text))
            continue
        if spec.name in seen:
            problems.append(
                AudienceProblem(
                    line, spec.name, f"duplicate audience (first defined on line {seen[spec.name]})"
                )
            )
            continue
        seen[spec.name] = line
        if entities is not None and spec.entity not in entities:
            declared = ", ".join(entities) or "none"
            problems.append(
                AudienceProblem(
                    line, spec.name, f"entity {spec.entity!r} is not declared ({declared})"
                )
            )
            continue
        try:
            compiled.append(compile_audience(spec, attributes.get(spec.entity, {})))
        except ExpressionError as exc:
            problems.append(AudienceProblem(line, spec.name, f"condition: {exc}"))
    return compiled, problems


@dataclass(frozen=True)
class AudienceSet:
    """One entity's audiences, with what their conditions read: evaluated once per
    profile write (`membership`)."""

    audiences: tuple[Audience, ...]
    #: (attribute name, how its served value becomes its CEL value) for each attribute
    #: a condition reads
    reads: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: whether a condition reads the traits
    reads_traits: bool
    #: whether a condition reads `now`, the processing time (`attributes.clock`)
    reads_now: bool = False

    @classmethod
    def of(
        cls, audiences: Sequence[Audience], cel_values: Mapping[str, Callable[[Any], Any]]
    ) -> AudienceSet:
        """`cel_values`: attribute name -> its CEL conversion (`CompiledAttribute.
        cel_value`; a derived attribute's value is used as it is)."""
        read = set().union(*(audience.condition.names for audience in audiences))
        reads = tuple(
            (name, cel_values.get(name, _as_is))
            for name in sorted(read)
            if name not in (TRAITS, NOW)
        )
        return cls(tuple(audiences), reads, TRAITS in read, NOW in read)

    @property
    def names(self) -> list[str]:
        return [audience.name for audience in self.audiences]

    def membership(
        self, attributes: Mapping[str, Any], traits: Mapping[str, Any], *, now: Any = None
    ) -> dict[str, bool]:
        """`{audience: is a member}` for a profile's rendered attribute values and
        merged traits, in declaration order; `now`: the processing time as a timestamp
        (`attributes.clock.now_value`), for conditions that read it."""
        return self.evaluate(self.activation(attributes, traits, now=now))

    def activation(
        self, attributes: Mapping[str, Any], traits: Mapping[str, Any], *, now: Any = None
    ) -> dict[str, Any]:
        """The conditions' variables: the attributes they read, as their CEL values, the
        traits if one reads them, and `now` if one reads it (given: without it such a
        condition fails, so is false)."""
        variables = {name: convert(attributes.get(name)) for name, convert in self.reads}
        if self.reads_traits and TRAITS not in variables:
            variables[TRAITS] = traits
        if self.reads_now and now is not None:
            variables[NOW] = now
        return variables

    def evaluate(self, variables: Mapping[str, Any]) -> dict[str, bool]:
        """`{audience: is a member}` for the conditions' variables (`activation`)."""
        return {audience.name: audience.includes(variables) for audience in self.audiences}


def _as_is(value: Any) -> Any:
    return value


def membership_change(
    previous: Sequence[str], membership: Mapping[str, bool]
) -> tuple[list[str], list[str]]:
    """(entered, exited): the audiences a profile is in now and was not in `previous`
    (the names it was a member of at its last write), and those it was in and is not
    now (an audience no longer declared included)."""
    before = set(previous)
    entered = [name for name, member in membership.items() if member and name not in before]
    exited = [name for name in previous if not membership.get(name, False)]
    return entered, exited
