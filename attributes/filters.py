"""`where` filters: CEL expressions over one event.

An attribute with `where: properties.revenue > 100.0` counts only the events for which
the expression is true. The expression sees the event's envelope as variables; a
filter that cannot be evaluated for an event (a missing key, a string compared with a
number) does not match it, like SQL's NULL in a WHERE clause, and is counted.

Attributes often share a filter. Each distinct filter is evaluated at most once per
event (`FilterResults`), however many attributes use it.
"""

from __future__ import annotations

from typing import Any

from attributes.events import Event
from attributes.expressions import (
    BOOL,
    DYN,
    STRING,
    CelType,
    EvaluationError,
    Expression,
    compile_expression,
    map_of,
)

#: The variables a filter may read: the event's envelope. The ids and the event name
#: can be null, so they are `dyn`: `event == "Order"` is then false, not an error.
EVENT_VARIABLES: dict[str, CelType] = {
    "type": STRING,
    "event": DYN,
    "messageId": DYN,
    "userId": DYN,
    "anonymousId": DYN,
    "properties": map_of(STRING, DYN),
    "traits": map_of(STRING, DYN),
    "context": map_of(STRING, DYN),
}


def compile_filter(source: str) -> Expression:
    """Compile a `where` filter; raises ExpressionError (e.g. for a non-bool filter)."""
    return compile_expression(source, EVENT_VARIABLES, expect=BOOL)


def event_variables(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "event": event.event,
        "messageId": event.messageId,
        "userId": event.userId,
        "anonymousId": event.anonymousId,
        "properties": event.properties,
        "traits": event.traits,
        "context": event.context,
    }


class FilterResults:
    """The filters' verdicts on one event, each computed on first use: True, False, or
    the reason the filter could not be evaluated (which does not match either)."""

    __slots__ = ("_event", "_variables", "_verdicts")

    def __init__(self, event: Event) -> None:
        self._event = event
        self._variables: dict[str, Any] | None = None
        self._verdicts: dict[int, bool | str] = {}

    def verdict(self, where: Expression) -> bool | str:
        verdict = self._verdicts.get(id(where))
        if verdict is None:
            if self._variables is None:
                self._variables = event_variables(self._event)
            try:
                verdict = where.evaluate(self._variables) is True
            except EvaluationError as exc:
                verdict = str(exc)
            self._verdicts[id(where)] = verdict
        return verdict
