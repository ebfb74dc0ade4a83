"""The rule file's format: one `AttributeSpec` per attribute, checked field by field.

Pydantic at the edge: these models say what a user may write and turn every mistake
into a message naming the key. What the hot path runs is compiled from them in
`attributes.rules`.

The functions, and which options each takes, are the registered aggregators'
(`attributes.aggregators.FUNCTIONS`), read as each spec is checked: a function
registered after this module was imported is accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import pydantic

import attributes.multisets  # noqa: F401  (registers list, unique_count, most_frequent)
from attributes.aggregators import DERIVED, FUNCTIONS, OPTIONS
from attributes.windows import UNITS

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def identifier(name: str) -> str:
    """`name`, if it can be a CEL identifier (what derived attributes and audience
    conditions read it as); a pydantic validation error otherwise."""
    if not _NAME.match(name):
        raise ValueError("must be an identifier: letters, digits, '_', not starting with a digit")
    return name


#: the largest `max_values`
MAX_VALUES = 10_000
#: the variable expressions read the processing time from (`attributes.clock`): no
#: attribute may take its name
NOW = "now"
#: the functions whose value can be read as a time (`as: timestamp`): one field value
TIMED_FUNCTIONS = ("most_recent", "first", "min", "max")
EventType = Literal["track", "identify", "page", "screen", "alias", "group"]
Unit = Literal["minutes", "hours", "days", "weeks", "months"]


class Span(pydantic.BaseModel):
    """A length of time, `{count: 30, unit: days}`."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    count: int = pydantic.Field(ge=1)
    unit: Unit

    @pydantic.model_validator(mode="after")
    def _in_range(self) -> Span:
        largest = UNITS[self.unit][1]
        if self.count > largest:
            raise ValueError(
                f"{self.count} {self.unit} is out of range: at most {largest} {self.unit}"
            )
        return self

    @property
    def milliseconds(self) -> int:
        length = UNITS[self.unit][0]
        assert length is not None, "months have no fixed length"
        return self.count * length


class AttributeSpec(pydantic.BaseModel):
    """One attribute as written in the rule file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    #: a registered aggregator's name, or `derived`
    function: str
    entity: str = "user"
    description: str = ""
    field: str | None = None
    event: str | list[str] | None = pydantic.Field(
        default=None, description="event name(s) this attribute counts; absent = every event"
    )
    type: list[EventType] | None = None
    #: a CEL filter over the event: only events for which it is true count
    where: str | None = None
    #: absent: all time
    lookback: Span | None = None
    #: with `lookback`: whole calendar units (weeks Sunday to Saturday, months), UTC
    calendar: bool = False
    #: with `lookback`: ignore events processed longer than this after their event time
    allowed_lateness: Span | None = None
    # the functions' options (`aggregators.OPTIONS`): each function takes those its
    # aggregator class names in `options`
    #: `list`: how many values to keep, and whether each value counts once
    size: int | None = pydantic.Field(default=None, ge=1, le=1000)
    distinct: bool | None = None
    #: `unique_count` and `most_frequent`: how many distinct values to keep (see
    #: `attributes.multisets`). At most MAX_VALUES: a profile's states are read and
    #: written whole, once per batch that touches it.
    max_values: int | None = pydantic.Field(default=None, ge=1, le=MAX_VALUES, strict=True)
    #: `derived` only: a CEL expression over other attributes of the same profile
    expression: str | None = None
    #: `timestamp`: expressions read the value (RFC 3339 text or epoch milliseconds) as
    #: a CEL timestamp; the served value is unchanged (`attributes.clock`)
    as_: Literal["timestamp"] | None = pydantic.Field(default=None, alias="as")
    #: part of the state key when set: a new revision starts a fresh state (an
    #: attribute made through the API gets one per change of its condition, so that
    #: no state mixes events counted under two conditions)
    revision: int = pydantic.Field(default=0, ge=0)

    @pydantic.field_validator("function", mode="before")
    @classmethod
    def _known_function(cls, function: Any) -> str:
        if isinstance(function, str) and (function in FUNCTIONS or function == DERIVED):
            return function
        raise ValueError(f"Input should be {_listed([*FUNCTIONS, DERIVED], 'or')}")

    @pydantic.field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if name == NOW:
            raise ValueError(f"'{NOW}' is the processing time in expressions: choose another name")
        return identifier(name)

    @pydantic.model_validator(mode="after")
    def _options_fit_the_function(self) -> AttributeSpec:
        if self.as_ is not None and self.function not in TIMED_FUNCTIONS:
            raise ValueError(f"'as' applies to functions {_listed(TIMED_FUNCTIONS, 'and')}")
        given = {
            key
            for key in self.model_fields_set
            if (value := getattr(self, key)) is not None and value is not False
        }
        taken = () if self.function == DERIVED else FUNCTIONS[self.function].options
        if misplaced := [key for key in OPTIONS if key in given and key not in taken]:
            raise ValueError(_misplaced_options(misplaced, self.function))
        if self.function == DERIVED:
            if self.expression is None:
                raise ValueError("function 'derived' needs an 'expression'")
            event_keys = given & {"field", "event", "type", "where", "lookback", "calendar"}
            event_keys |= given & {"allowed_lateness"}
            if event_keys:
                keys = ", ".join(repr(key) for key in sorted(event_keys))
                raise ValueError(f"a derived attribute reads no events: remove {keys}")
        elif self.expression is not None:
            raise ValueError("'expression' applies to function 'derived'")
        if self.lookback is None and (self.calendar or self.allowed_lateness is not None):
            raise ValueError("'calendar' and 'allowed_lateness' need a 'lookback' window")
        if self.allowed_lateness is not None and self.allowed_lateness.unit == "months":
            raise ValueError("allowed_lateness: use minutes, hours, days or weeks")
        return self


def _listed(names: Sequence[str], conjunction: str) -> str:
    """`'a', 'b' or 'c'` (as pydantic lists a Literal's values), `'a' and 'b'`."""
    quoted = [repr(name) for name in names]
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def _misplaced_options(keys: list[str], function: str) -> str:
    """e.g. "'size' and 'distinct' apply to function 'list', not 'sum'", one clause per
    set of functions that take them."""
    by_takers: dict[tuple[str, ...], list[str]] = {}
    for key in keys:
        takers = tuple(name for name, kind in FUNCTIONS.items() if key in kind.options)
        by_takers.setdefault(takers, []).append(key)
    clauses = []
    for takers, group in by_takers.items():
        named = _listed(group, "and")
        verb = "applies" if len(group) == 1 else "apply"
        if not takers:
            clauses.append(f"{named} {verb} to no function")
            continue
        functions = f"function{'s' if len(takers) > 1 else ''} {_listed(takers, 'and')}"
        clauses.append(f"{named} {verb} to {functions}, not {function!r}")
    return "; ".join(clauses)
