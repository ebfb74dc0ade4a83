"""Computed-attribute rules: the YAML rule file, its checks, and the compiled rule set.

A rule file is a user's program, so it is checked whole at load and every problem is
reported with file, line and attribute name. What survives is a `RuleSet`: plain
objects with field getters compiled and attributes indexed by event name, so the
hot path does one dict lookup per event to find the attributes it feeds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from attributes.aggregators import Aggregator, Avg, Count, First, Max, Min, MostRecent, Sum
from attributes.multisets import MostFrequent, RecentValues, UniqueCount
from attributes.paths import Getter, InvalidPath, compile_path

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class RuleProblem:
    file: str
    line: int | None
    attribute: str | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f" attribute {self.attribute!r}:" if self.attribute else ""
        return f"{where}:{who} {self.problem}"


class RuleFileError(ValueError):
    """A rule file that cannot be used; `problems` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class AttributeSpec(pydantic.BaseModel):
    """One attribute as written in the rule file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    function: Literal[
        "sum",
        "count",
        "min",
        "max",
        "avg",
        "most_recent",
        "first",
        "list",
        "unique_count",
        "most_frequent",
    ]
    entity: str = "user"
    description: str = ""
    field: str | None = None
    event: str | list[str] | None = pydantic.Field(
        default=None, description="event name(s) this attribute counts; absent = every event"
    )
    type: list[Literal["track", "identify", "page", "screen", "alias", "group"]] | None = None
    #: `list` only: how many values to keep, and whether each value counts once
    size: int | None = pydantic.Field(default=None, ge=1, le=1000)
    distinct: bool | None = None

    @pydantic.model_validator(mode="after")
    def _list_options(self) -> AttributeSpec:
        if self.function != "list" and (self.size is not None or self.distinct is not None):
            raise ValueError(
                f"'size' and 'distinct' apply to function 'list', not {self.function!r}"
            )
        return self

    @pydantic.field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                "must be an identifier: letters, digits, '_', not starting with a digit"
            )
        return name


@dataclass(frozen=True, slots=True)
class CompiledAttribute:
    name: str
    entity: str
    aggregator: Aggregator
    getter: Getter | None
    description: str = ""


@dataclass(frozen=True)
class RuleSet:
    """The compiled rules. `for_event(name)` gives the attributes an event feeds."""

    attributes: tuple[CompiledAttribute, ...]
    _by_event: dict[str, tuple[CompiledAttribute, ...]] = field(repr=False)
    _any_event: tuple[CompiledAttribute, ...] = field(repr=False)
    _types: dict[str, frozenset[str] | None] = field(repr=False)

    def for_event(self, event_type: str, event_name: str | None) -> Iterable[CompiledAttribute]:
        named = self._by_event.get(event_name, ()) if event_name is not None else ()
        for attribute in (*named, *self._any_event):
            types = self._types[attribute.name]
            if types is None or event_type in types:
                yield attribute

    @classmethod
    def build(cls, attributes: list[tuple[AttributeSpec, CompiledAttribute]]) -> RuleSet:
        by_event: dict[str, list[CompiledAttribute]] = {}
        any_event: list[CompiledAttribute] = []
        types: dict[str, frozenset[str] | None] = {}
        for spec, compiled in attributes:
            names = [spec.event] if isinstance(spec.event, str) else spec.event
            if names is not None:
                names = list(dict.fromkeys(names))  # listed twice still counts once
            if names is None:
                any_event.append(compiled)
            for name in names or ():
                by_event.setdefault(name, []).append(compiled)
            types[spec.name] = frozenset(spec.type) if spec.type else None
        return cls(
            attributes=tuple(compiled for _, compiled in attributes),
            _by_event={name: tuple(attrs) for name, attrs in by_event.items()},
            _any_event=tuple(any_event),
            _types=types,
        )


def aggregator_for(spec: AttributeSpec) -> Aggregator:
    """The aggregator of a spec's function, configured with its options."""
    if spec.function == "list":
        return RecentValues(size=spec.size or 10, distinct=bool(spec.distinct))
    return _SHARED[spec.function]


#: Aggregators without options are stateless: one instance serves every attribute.
_SHARED: dict[str, Aggregator] = {
    aggregator.function: aggregator
    for aggregator in (
        Sum(),
        Count(),
        Min(),
        Max(),
        Avg(),
        MostRecent(),
        First(),
        UniqueCount(),
        MostFrequent(),
    )
}


def _compile(spec: AttributeSpec) -> CompiledAttribute:
    aggregator = aggregator_for(spec)
    if aggregator.needs_field and spec.field is None:
        raise ValueError(f"function {spec.function!r} needs a 'field'")
    try:
        getter = compile_path(spec.field) if spec.field is not None else None
    except InvalidPath as exc:
        raise ValueError(str(exc)) from None
    return CompiledAttribute(spec.name, spec.entity, aggregator, getter, spec.description)


def _pydantic_problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else str(error["msg"])


def parse_rules(text: str, file: str = "<rules>") -> RuleSet:
    """Parse and compile a rule file's text; raise RuleFileError listing every problem."""
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
    lines = [node.start_mark.line + 1 for node in items_node.value]

    problems: list[RuleProblem] = []
    compiled: list[tuple[AttributeSpec, CompiledAttribute]] = []
    seen: dict[str, int] = {}
    for raw, line in zip(data["attributes"], lines, strict=True):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) else None
        try:
            spec = AttributeSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            problems.extend(
                RuleProblem(file, line, label, _pydantic_problem(e)) for e in exc.errors()
            )
            continue
        if spec.name in seen:
            problems.append(
                RuleProblem(
                    file,
                    line,
                    spec.name,
                    f"duplicate name (first defined on line {seen[spec.name]})",
                )
            )
            continue
        seen[spec.name] = line
        try:
            compiled.append((spec, _compile(spec)))
        except ValueError as exc:
            problems.append(RuleProblem(file, line, spec.name, str(exc)))
    if problems:
        raise RuleFileError(problems)
    return RuleSet.build(compiled)


def load_rules(path: str | Path) -> RuleSet:
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
    return parse_rules(text, str(path))
