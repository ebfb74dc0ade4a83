"""Computed-attribute rules: the YAML rule file and its checks.

A rule file is a user's program, so it is checked whole at load and every problem is
reported with file, line and attribute name (the format itself is `attributes.specs`).
What survives is a `RuleSet` (`attributes.ruleset`): plain objects with field getters,
filters, windows and derived expressions compiled, and attributes indexed by event
name, so the hot path does one dict lookup per event to find the attributes it feeds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydantic
import yaml

from attributes.aggregators import FUNCTIONS, Aggregator
from attributes.audiences import parse_audiences, section
from attributes.clock import timestamp_reader
from attributes.derived import RESULT_TYPES, DerivedAttribute, cel_value, compile_derived
from attributes.errors import RuleError
from attributes.expressions import DYN, CelType, Expression, ExpressionError
from attributes.filters import compile_filter
from attributes.paths import compile_path
from attributes.ruleset import CompiledAttribute, RuleSet
from attributes.specs import AttributeSpec
from attributes.windows import WindowedAggregator, make_window


@dataclass(frozen=True)
class RuleProblem:
    """One problem of a file a user wrote: where, whose, and what is wrong. The rule
    file and the personalization file (`api.td_config`) report theirs alike, as
    `file:line: kind 'name': problem`, so one reader (and one test) serves both."""

    file: str
    line: int | None
    #: the item the problem is in (None: the file as a whole)
    name: str | None
    problem: str
    #: what `name` names: an `attribute` or an `audience` (rule file), a `service`
    kind: str = "attribute"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f" {self.kind} {self.name!r}:" if self.name else ""
        return f"{where}:{who} {self.problem}"


class RuleFileError(RuleError):
    """A file a user wrote that cannot be used (the rule file; the personalization
    file's error derives from it); `problems` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


def aggregator_for(spec: AttributeSpec) -> Aggregator:
    """The aggregator of a spec's function (`FUNCTIONS`), given the options it takes
    that the spec sets."""
    kind = FUNCTIONS[spec.function]
    options = {key: value for key in kind.options if (value := getattr(spec, key)) is not None}
    if options:
        return kind(**options)
    shared = _SHARED.get(kind)
    if shared is None:
        shared = _SHARED[kind] = kind()
    return shared


#: Aggregators are stateless: one instance without options serves every attribute.
_SHARED: dict[type[Aggregator], Aggregator] = {}


def window_for(spec: AttributeSpec, aggregator: Aggregator) -> WindowedAggregator | None:
    if spec.lookback is None:
        return None
    window = make_window(spec.lookback.count, spec.lookback.unit, spec.calendar)
    lateness = spec.allowed_lateness.milliseconds if spec.allowed_lateness else None
    return WindowedAggregator(aggregator, window, lateness)


def _compile(spec: AttributeSpec, filters: dict[str, Expression]) -> CompiledAttribute:
    """A spec's problems raise `RuleError` (a bad field path: `InvalidPath`, one); what
    else it raises is a bug of traitflow's, not of the rule file."""
    aggregator = aggregator_for(spec)
    if aggregator.needs_field and spec.field is None:
        raise RuleError(f"function {spec.function!r} needs a 'field'")
    getter = compile_path(spec.field) if spec.field is not None else None
    where = None
    if spec.where is not None:
        where = filters.get(spec.where)
        if where is None:  # one compiled filter per distinct text: evaluated once per event
            try:
                where = filters[spec.where] = compile_filter(spec.where)
            except ExpressionError as exc:
                raise RuleError(f"where: {exc}") from None
    return CompiledAttribute(
        spec.name,
        spec.entity,
        aggregator,
        getter,
        spec.description,
        where,
        window_for(spec, aggregator),
        timestamp_reader(cel_value(spec.function)) if spec.as_ else cel_value(spec.function),
        state_key(spec, aggregator),
    )


def state_key(spec: AttributeSpec, aggregator: Aggregator | None = None) -> str:
    """The name, the aggregator's `shape` and the window: e.g. `ltv/sum`,
    `seen/list:5:distinct`, `orders/count@30days`, `cats/unique_count@1months/calendar`,
    `cats/unique_count:100` (a cap: which values a state keeps depends on it)."""
    shape = (aggregator or aggregator_for(spec)).shape
    if spec.lookback is not None:
        shape += f"@{spec.lookback.count}{spec.lookback.unit}"
        shape += "/calendar" if spec.calendar else ""
    if spec.revision:
        shape += f"~{spec.revision}"
    return f"{spec.name}/{shape}"


@dataclass(frozen=True, slots=True)
class Generations:
    """Which generation of attribute states rules keep. A source delete job has every
    attribute computed again without the source's history (`attributes.catalog.
    Recomputation`): meanwhile the states of the `served` generation are served and
    those of the `recomputing` one are computed beside them (`RuleSet.shadows`), and
    once the recomputation is done its generation is the served one. A generation is
    part of each state key (`^{generation}`, none for 0), so that no state mixes
    events counted with and without that history."""

    served: int = 0
    recomputing: int | None = None


#: the first generation, and no recomputation: what rules keep unless told
FIRST = Generations()


def generation_key(key: str, generation: int) -> str:
    """`key` (`state_key`'s) in states of `generation`."""
    return f"{key}^{generation}" if generation else key


def regenerated(attribute: CompiledAttribute, generation: int) -> CompiledAttribute:
    return replace(attribute, key=generation_key(attribute.key, generation))


def _pydantic_problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")  # our validators' own words
    return f"{location}: {message}" if location else message


def parse_rules(
    text: str,
    file: str = "<rules>",
    entities: Collection[str] | None = None,
    managed: Sequence[tuple[str, Mapping[str, Any]]] = (),
    generations: Generations = FIRST,
) -> RuleSet:
    """Parse and compile a rule file's text; raise RuleFileError listing every problem.
    With `entities` (the configured ones), a rule for any other entity is a problem.
    `managed` are attributes made through the API (`traitflow.rule_catalog`), each with
    where it comes from (a problem's "file"): they follow the file's attributes and are
    checked with them, so that a name is unique and an expression reads only what
    exists across both. `generations`: which states are served and which, if any, are
    computed beside them (`Generations`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RuleFileError([RuleProblem(file, line, None, f"not valid YAML: {exc}")]) from None

    if not isinstance(data, dict) or not isinstance(data.get("attributes"), list):
        raise RuleFileError(
            [RuleProblem(file, 1, None, "expected a mapping with an 'attributes' list")]
        )
    assert isinstance(root, yaml.MappingNode)
    # like safe_load, the last of repeated keys wins
    items_node = [value for key, value in root.value if key.value == "attributes"][-1]
    items: list[tuple[Any, str, int | None]] = [
        (raw, file, node.start_mark.line + 1)
        for raw, node in zip(data["attributes"], items_node.value, strict=True)
    ]
    items += ((dict(raw), origin, None) for origin, raw in managed)
    #: attribute name -> where it is defined
    origins: dict[str, str] = {}

    problems: list[RuleProblem] = []
    compiled: list[tuple[AttributeSpec, CompiledAttribute]] = []
    derived: dict[str, AttributeSpec] = {}
    filters: dict[str, Expression] = {}
    seen: dict[str, int | None] = {}
    for raw, origin, line in items:
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) else None
        try:
            spec = AttributeSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            problems.extend(
                RuleProblem(origin, line, label, _pydantic_problem(e)) for e in exc.errors()
            )
            continue
        if spec.name in seen:
            problems.append(
                RuleProblem(
                    origin,
                    line,
                    spec.name,
                    f"duplicate name (first defined {_at(origins[spec.name], seen[spec.name])})",
                )
            )
            continue
        seen[spec.name], origins[spec.name] = line, origin
        if entities is not None and spec.entity not in entities:
            declared = ", ".join(entities) or "none"
            problems.append(
                RuleProblem(
                    origin, line, spec.name, f"entity {spec.entity!r} is not declared ({declared})"
                )
            )
            continue
        if spec.function == "derived":
            derived[spec.name] = spec
            continue
        try:
            compiled.append((spec, _compile(spec, filters)))
        except RuleError as exc:  # not ValueError: a bug here is no problem of the file
            problems.append(RuleProblem(origin, line, spec.name, str(exc)))

    # a derived attribute reads the attributes of its own entity's profile
    expressions: dict[str, Expression] = {}
    for entity in dict.fromkeys(spec.entity for spec in derived.values()):
        compiled_here, failed = compile_derived(
            {
                name: spec.expression or ""
                for name, spec in derived.items()
                if spec.entity == entity
            },
            {
                spec.name: RESULT_TYPES[spec.function]
                for spec, _ in compiled
                if spec.entity == entity
            },
        )
        expressions.update(compiled_here)
        problems.extend(
            RuleProblem(origins[name], seen[name], name, problem)
            for name, problem in failed.items()
        )
    types: dict[str, dict[str, CelType]] = {}
    for spec, _ in compiled:
        types.setdefault(spec.entity, {})[spec.name] = RESULT_TYPES[spec.function]
    for name in expressions:
        types.setdefault(derived[name].entity, {})[name] = DYN  # null when it fails
    audiences, failed_audiences = parse_audiences(section(root, data), types, entities)
    problems.extend(
        RuleProblem(file, p.line, p.name, p.problem, "audience") for p in failed_audiences
    )
    if problems:
        problems.sort(key=lambda problem: problem.line or 0)
        raise RuleFileError(problems)
    served, recomputing = generations.served, generations.recomputing
    shadows = []
    if recomputing is not None:
        shadows = [(spec, regenerated(done, recomputing)) for spec, done in compiled]
    if served:
        compiled = [(spec, regenerated(done, served)) for spec, done in compiled]
    return RuleSet.build(
        compiled,
        [
            DerivedAttribute(name, derived[name].entity, expression, derived[name].description)
            for name, expression in expressions.items()
        ],
        names=list(seen),
        audiences=audiences,
        shadows=shadows,
    )


def _at(origin: str, line: int | None) -> str:
    """Where an attribute was defined, for a problem's text."""
    return f"on line {line}" if line else f"in {origin}"


def load_rules(path: str | Path, entities: Collection[str] | None = None) -> RuleSet:
    """Load a rule file; a missing file is a RuleFileError too, with the path in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
        raise RuleFileError([RuleProblem(str(path), None, None, problem)]) from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start}: {exc.reason})"
        raise RuleFileError([RuleProblem(str(path), None, None, problem)]) from None
    return parse_rules(text, str(path), entities)
