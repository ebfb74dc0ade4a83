"""Lookback windows in event time: which events an attribute counts at a given moment.

A window splits time into *buckets* and, at any moment `now`, covers the buckets from
`start(now)` on. An attribute keeps one aggregator state per bucket, so an event
lands in its own bucket whatever order it arrives in, and a bucket that falls out of
the window is dropped whole. The window is exact for this definition; its edge moves
one bucket at a time:

- sliding (`lookback: {count: 30, unit: days}`): the 30 days that end with the
  current bucket, i.e. events at or after `start(now) = floor(now) + bucket - 30 days`.
  The bucket size follows the window length: 1 s up to an hour, 1 min up to two
  days, 1 h up to 90 days, 1 day beyond (and always 1 day for months, which are
  calendar months back from the current day, clamped to the month's last day);
- calendar (`calendar: true`, Adobe's calendar-aligned windows): whole calendar units
  in UTC, the current one included: `{count: 1, unit: months}` is this month so far,
  `{count: 2, unit: weeks}` is this week and last (weeks run Sunday to Saturday).

`expiry(bucket)` is the first moment the bucket is out of the window: the worker
indexes each profile by its earliest expiry so that windows shrink on time even for
profiles that receive no events.
"""

from __future__ import annotations

import bisect
import calendar
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from attributes.aggregators import Aggregator, Rejected, State

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

#: unit -> (length in ms for fixed-length units, largest allowed count)
UNITS: dict[str, tuple[int | None, int]] = {
    "minutes": (MINUTE, 1440),
    "hours": (HOUR, 720),
    "days": (DAY, 366),
    "weeks": (WEEK, 104),
    "months": (None, 36),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 1970-01-01 was a Thursday: days since the epoch + 4 is 0 on a Sunday (mod 7).
_SUNDAY_OFFSET = 4


def _datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def add_months(ms: int, months: int) -> int:
    """`ms` moved by whole calendar months, the day clamped to the month's last day."""
    moment = _datetime(ms)
    year, month0 = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return _ms(moment.replace(year=year, month=month0 + 1, day=day))


def month_start(ms: int) -> int:
    return _month_start_of_day(ms // DAY)


@functools.lru_cache(maxsize=1024)
def _month_start_of_day(day: int) -> int:
    moment = _datetime(day * DAY)
    return _ms(datetime(moment.year, moment.month, 1, tzinfo=UTC))


def week_start(ms: int) -> int:
    """The Sunday 00:00 UTC on or before `ms`."""
    day = ms // DAY
    return (day - (day + _SUNDAY_OFFSET) % 7) * DAY


class Window(ABC):
    """Which buckets count at a moment; every time is epoch milliseconds, UTC."""

    count: int
    unit: str

    @abstractmethod
    def bucket(self, ts: int) -> int:
        """The start of the bucket an event at `ts` belongs to."""

    @abstractmethod
    def start(self, now: int) -> int:
        """The earliest bucket inside the window at `now`."""

    @abstractmethod
    def expiry(self, bucket: int) -> int:
        """The first moment at which `bucket` is no longer inside the window."""

    @property
    def label(self) -> str:
        return f"{self.count} {self.unit}"


def bucket_size(length: int) -> int:
    """The bucket of a fixed-length sliding window: at most a few thousand per window."""
    if length <= HOUR:
        return SECOND
    if length <= 2 * DAY:
        return MINUTE
    if length <= 90 * DAY:
        return HOUR
    return DAY


@dataclass(frozen=True)
class SlidingWindow(Window):
    """The last `count` `unit`s (minutes to weeks), ending with the current bucket."""

    count: int
    unit: str
    length: int = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        unit_length = UNITS[self.unit][0]
        assert unit_length is not None, "months are a SlidingMonths window"
        object.__setattr__(self, "length", self.count * unit_length)
        object.__setattr__(self, "size", bucket_size(self.count * unit_length))

    def bucket(self, ts: int) -> int:
        return ts - ts % self.size

    def start(self, now: int) -> int:
        return now - now % self.size + self.size - self.length

    def expiry(self, bucket: int) -> int:
        return bucket + self.length


@dataclass(frozen=True)
class SlidingMonths(Window):
    """The last `count` calendar months back from the current day (day buckets):
    on 15 March, one month covers 16 February to today."""

    count: int
    unit: str = "months"

    def bucket(self, ts: int) -> int:
        return ts - ts % DAY

    def start(self, now: int) -> int:
        return _add_months_cached(now - now % DAY, -self.count) + DAY

    def expiry(self, bucket: int) -> int:
        # `start` only grows with `now`; from a day no later than the answer, step on.
        moment = add_months(bucket, self.count) - 4 * DAY
        while self.start(moment) <= bucket:
            moment += DAY
        return moment


#: its arguments are day or month starts, and few: cached
_add_months_cached = functools.lru_cache(maxsize=1024)(add_months)


_CALENDAR_FLOOR: dict[str, Callable[[int], int]] = {
    "minutes": lambda ts: ts - ts % MINUTE,
    "hours": lambda ts: ts - ts % HOUR,
    "days": lambda ts: ts - ts % DAY,
    "weeks": week_start,
    "months": month_start,
}


@dataclass(frozen=True)
class CalendarWindow(Window):
    """Whole calendar units, the current one included (weeks start on Sunday, UTC)."""

    count: int
    unit: str

    def bucket(self, ts: int) -> int:
        return _CALENDAR_FLOOR[self.unit](ts)

    def _shift(self, bucket: int, units: int) -> int:
        if self.unit == "months":
            return _add_months_cached(bucket, units)
        length = UNITS[self.unit][0]
        assert length is not None
        return bucket + units * length

    def start(self, now: int) -> int:
        return self._shift(self.bucket(now), 1 - self.count)

    def expiry(self, bucket: int) -> int:
        return self._shift(bucket, self.count)


def make_window(count: int, unit: str, calendar_aligned: bool = False) -> Window:
    if calendar_aligned:
        return CalendarWindow(count, unit)
    if unit == "months":
        return SlidingMonths(count)
    return SlidingWindow(count, unit)


class OutsideWindow(Rejected):
    """An event older than its attribute's window (or later than its allowed
    lateness): ignored for that attribute, as the window says, and counted."""

    kind = "outside_window"


_bucket_of = itemgetter(0)


class WindowedAggregator:
    """An aggregator over a lookback window. State: ascending `[[bucket, state], ...]`,
    one inner aggregator state per non-empty bucket inside the window.

    The result at `now` merges the buckets inside the window with the inner
    aggregator's `merge`, so it is exactly the inner aggregator's result over the
    events of those buckets, whatever order they came in. `lateness` (ms), when set,
    also ignores events processed more than that long after their event time.
    """

    def __init__(self, inner: Aggregator, window: Window, lateness: int | None = None) -> None:
        self.inner = inner
        self.window = window
        self.lateness = lateness
        self._start_at: tuple[int, int] = (-1, 0)  # (now, start(now)): one batch, one now

    def start(self, now: int) -> int:
        if self._start_at[0] != now:
            self._start_at = (now, self.window.start(now))
        return self._start_at[1]

    def initial(self) -> State:
        return []

    def add(self, state: State, value: Any, *, ts: int, mid: str, now: int) -> State:
        start = self.start(now)
        bucket = self.window.bucket(ts)
        if bucket < start:
            raise OutsideWindow(f"event time is before the {self.window.label} window")
        if self.lateness is not None and now - ts > self.lateness:
            late = (now - ts) // SECOND
            raise OutsideWindow(f"event arrived {late}s after its event time, past its lateness")
        self.expire(state, now)
        at = bisect.bisect_left(state, bucket, key=_bucket_of)
        if at < len(state) and state[at][0] == bucket:
            state[at][1] = self.inner.add(state[at][1], value, ts=ts, mid=mid)
        else:  # inner.add raises before anything is inserted
            state.insert(at, [bucket, self.inner.add(self.inner.initial(), value, ts=ts, mid=mid)])
        return state

    def expire(self, state: State, now: int) -> State:
        """Drop, in place, the buckets that are out of the window at `now`."""
        if state and state[0][0] < (start := self.start(now)):
            del state[: bisect.bisect_left(state, start, key=_bucket_of)]
        return state

    def merge(self, a: State, b: State) -> State:
        """Bucket by bucket; `a` and `b` are left alone."""
        merged: dict[int, Any] = {bucket: inner for bucket, inner in a}
        for bucket, inner in b:
            mine = merged.get(bucket)
            merged[bucket] = inner if mine is None else self.inner.merge(mine, inner)
        return [[bucket, merged[bucket]] for bucket in sorted(merged)]

    def result(self, state: State, now: int) -> Any:
        start = self.start(now)
        return self.inner.result_of([inner for bucket, inner in state if bucket >= start])

    def next_expiry(self, state: State) -> int | None:
        """When the oldest bucket leaves the window (the result may change then)."""
        return self.window.expiry(state[0][0]) if state else None
