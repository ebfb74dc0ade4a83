"""Time in the rule language: `now`, attributes read as timestamps, and when a profile
whose rules read `now` must be rendered again.

"Days since the last order" changes while no event arrives, so derived attributes
and audience conditions read `now`, the processing time the view is rendered at, as
a CEL timestamp (`(now - last_order_at).getHours() / 24`). An attribute holding a
time is a timestamp to expressions when it holds a `datetime` already (`most_recent`
or `first` of the event's `timestamp` field), or when its rule says `as: timestamp`
(RFC 3339 text or epoch milliseconds in a property, e.g. `max` of
`properties.ordered_at`).

A value read from `now` can change at any moment, and which moment cannot be read
off an arbitrary expression; so a profile whose rules read `now` is rendered again
at most `refresh_ms` after each write, through the same expiry index that moves
windows (`streams.rendering`): its time-dependent values are at most that stale,
and the cost is one render per profile per `refresh_ms`, whatever the expressions.
Windows still move on time exactly (the earlier of the two is scheduled).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from attributes.expressions.times import as_timestamp, timestamp_from_ms
from attributes.specs import NOW

__all__ = ["NOW", "next_render", "now_value", "timestamp_reader"]

#: how long a time-dependent value may be stale by default (an hour: "days since" is
#: then right within the hour); settings override it (`TRAITFLOW_TIME_REFRESH_S`)
DEFAULT_REFRESH_MS = 3_600_000


def now_value(now_ms: int) -> datetime:
    """`now` as expressions read it: the processing time (epoch ms) as a timestamp."""
    return timestamp_from_ms(now_ms)


def timestamp_reader(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An `as: timestamp` attribute's CEL conversion: its served value as a timestamp,
    or null (the expression fails as on null) when it is none."""

    def read(value: Any) -> datetime | None:
        return as_timestamp(convert(value))

    return read


def next_render(now_ms: int, windows_due: int | None, refresh_ms: int) -> int:
    """When a profile whose rules read `now`, written at `now_ms`, is rendered again:
    after `refresh_ms`, or when a window of its moves first (`windows_due`)."""
    due = now_ms + refresh_ms
    return due if windows_due is None else min(due, windows_due)
