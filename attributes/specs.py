"""The rule file's format: one `AttributeSpec` per attribute, checked field by field.

Pydantic at the edge: these models say what a user may write and turn every mistake
into a message naming the key. What the hot path runs is compiled from them in
`attributes.rules`.
"""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from attributes.windows import UNITS

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

Function = Literal[
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
    "derived",
]
#: the functions that take `max_values`
CAPPED_FUNCTIONS = frozenset({"unique_count", "most_frequent"})
#: the largest `max_values`
MAX_VALUES = 10_000
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
    function: Function
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
    #: `list` only: how many values to keep, and whether each value counts once
    size: int | None = pydantic.Field(default=None, ge=1, le=1000)
    distinct: bool | None = None
    #: `unique_count` and `most_frequent` only: how many distinct values to keep (see
    #: `attributes.multisets`). At most MAX_VALUES: a profile's states are read and
    #: written whole, once per batch that touches it.
    max_values: int | None = pydantic.Field(default=None, ge=1, le=MAX_VALUES, strict=True)
    #: `derived` only: a CEL expression over other attributes of the same profile
    expression: str | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                "must be an identifier: letters, digits, '_', not starting with a digit"
            )
        return name

    @pydantic.model_validator(mode="after")
    def _options_fit_the_function(self) -> AttributeSpec:
        given = {key for key in self.model_fields_set if getattr(self, key) not in (None, False)}
        if self.function != "list" and given & {"size", "distinct"}:
            raise ValueError(
                f"'size' and 'distinct' apply to function 'list', not {self.function!r}"
            )
        if self.max_values is not None and self.function not in CAPPED_FUNCTIONS:
            raise ValueError(
                "'max_values' applies to functions 'unique_count' and 'most_frequent', "
                f"not {self.function!r}"
            )
        if self.function == "derived":
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
