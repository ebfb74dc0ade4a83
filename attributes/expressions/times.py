"""CEL's timestamps and durations on Python's `datetime` and `timedelta`.

Rules speak of time ("days since the last order", "time between purchases"), so
expressions have CEL's `google.protobuf.Timestamp` and `Duration`: `timestamp("...")`
reads RFC 3339 text, `duration("36h")` Go's duration syntax; a timestamp minus a
timestamp is a duration, a timestamp plus or minus a duration a timestamp; both
order and compare; accessors (`getHours()`, `getDayOfWeek()`, ...) read a
timestamp's fields in UTC or in a time zone given as an IANA name or `+HH:MM`, and
a duration's length in whole units (truncated toward zero).

A timestamp is a timezone-aware `datetime` in UTC, a duration a `timedelta`, both
to the microsecond (CEL's nanoseconds are truncated, as in the reference
implementation the tests compare against). Python ranges are CEL's for timestamps
(years 1 to 9999); durations are bounded to CEL's ten thousand years. A result out
of range is an EvaluationError, as integer overflow is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attributes.expressions.errors import EvaluationError

#: CEL's bound on a duration, either way: about ten thousand years
MAX_DURATION = timedelta(seconds=315_576_000_000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_MICROSECONDS = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),
    "μs": Decimal(1),
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}
#: CEL's bound, in microseconds
_MAX_MICROSECONDS = 315_576_000_000 * 1_000_000
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp (`2026-12-01T09:30:00Z`, `...+01:00`), in UTC."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise EvaluationError(f"timestamp({text!r}): not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=UTC,
        )
        if not zulu:
            offset = timedelta(hours=int(oh), minutes=int(om))
            moment = moment - offset if sign == "+" else moment + offset
        return moment
    except (ValueError, OverflowError):
        raise EvaluationError(f"timestamp({text!r}) is out of range") from None


def parse_duration(text: str) -> timedelta:
    """A Go duration (`36h`, `1h30m`, `-1.5s`, `250ms`, `0`), to the microsecond."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return timedelta(0)
    microseconds = Decimal(0)  # exact: 0.29h is 1,044,000,000 microseconds, not one less
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            break
        microseconds += Decimal(match.group(1)) * _UNIT_MICROSECONDS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise EvaluationError(f"duration({text!r}): not a duration such as '36h' or '1h30m'")
    if microseconds > _MAX_MICROSECONDS:
        raise EvaluationError("duration out of range")
    length = timedelta(microseconds=int(microseconds))
    return -length if text[:1] == "-" else length


def checked_duration(length: timedelta) -> timedelta:
    if -MAX_DURATION <= length <= MAX_DURATION:
        return length
    raise EvaluationError("duration out of range")


def timestamp_from_ms(epoch_ms: int | float) -> datetime:
    """The timestamp of an epoch time in milliseconds (the pipeline's clock unit)."""
    try:
        return _EPOCH + timedelta(milliseconds=epoch_ms)
    except (OverflowError, ValueError):
        raise EvaluationError(f"epoch milliseconds {epoch_ms!r} are out of range") from None


def as_timestamp(value: Any) -> datetime | None:
    """A served value as a timestamp: RFC 3339 text, epoch milliseconds or a datetime
    (a naive one is UTC); None for null or a value that is none of those, which makes
    an expression reading it fail as null does (an attribute's `as: timestamp`)."""
    try:
        if type(value) is datetime:
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if type(value) is str:
            return parse_timestamp(value)
        if type(value) is int or type(value) is float:
            return timestamp_from_ms(value)
    except (EvaluationError, OverflowError, ValueError):
        return None
    return None


# --- arithmetic ----------------------------------------------------------------------------


def add_timestamp_duration(moment: datetime, length: timedelta) -> datetime:
    try:
        return moment + length
    except OverflowError:
        raise EvaluationError("timestamp out of range") from None


def add_duration_timestamp(length: timedelta, moment: datetime) -> datetime:
    return add_timestamp_duration(moment, length)


def subtract_timestamp_duration(moment: datetime, length: timedelta) -> datetime:
    try:
        return moment - length
    except OverflowError:
        raise EvaluationError("timestamp out of range") from None


def subtract_timestamps(first: datetime, second: datetime) -> timedelta:
    return checked_duration(first - second)


def add_durations(first: timedelta, second: timedelta) -> timedelta:
    try:
        return checked_duration(first + second)
    except OverflowError:
        raise EvaluationError("duration out of range") from None


def subtract_durations(first: timedelta, second: timedelta) -> timedelta:
    try:
        return checked_duration(first - second)
    except OverflowError:
        raise EvaluationError("duration out of range") from None


# --- conversions ---------------------------------------------------------------------------


def timestamp_to_string(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, and fractional seconds only when there are some."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def duration_to_string(length: timedelta) -> str:
    """Seconds with an `s`, as protobuf's JSON form (`5400s`, `1.5s`)."""
    microseconds = length // _MICROSECOND
    sign = "-" if microseconds < 0 else ""
    seconds, fraction = divmod(abs(microseconds), 1_000_000)
    if fraction:
        return f"{sign}{seconds}.{fraction:06d}".rstrip("0") + "s"
    return f"{sign}{seconds}s"


def timestamp_to_int(moment: datetime) -> int:
    """Seconds since the epoch, rounded down, as CEL's `int(timestamp)`."""
    return (moment - _EPOCH) // timedelta(seconds=1)


# --- accessors -----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    match = _OFFSET.fullmatch(name)
    if match is not None:
        sign, hours, minutes = match.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        if offset >= timedelta(hours=24):
            raise EvaluationError(f"time zone {name!r} is out of range")
        return timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise EvaluationError(f"unknown time zone {name!r}") from None


def _in_zone(moment: datetime, zone: str | None) -> datetime:
    return moment if zone is None else moment.astimezone(_zone(zone))


def _field(read: Any) -> Any:
    """An accessor with an optional time zone argument, from a function of a datetime."""

    def accessor(moment: datetime, zone: str | None = None) -> int:
        return int(read(_in_zone(moment, zone)))

    return accessor


#: timestamp accessor -> its value, CEL's way (months, days of the month and of the
#: year from 0; days of the week from Sunday, 0)
TIMESTAMP_FIELDS = {
    "getFullYear": _field(lambda m: m.year),
    "getMonth": _field(lambda m: m.month - 1),
    "getDate": _field(lambda m: m.day),
    "getDayOfMonth": _field(lambda m: m.day - 1),
    "getDayOfWeek": _field(lambda m: m.isoweekday() % 7),
    "getDayOfYear": _field(lambda m: m.timetuple().tm_yday - 1),
    "getHours": _field(lambda m: m.hour),
    "getMinutes": _field(lambda m: m.minute),
    "getSeconds": _field(lambda m: m.second),
    "getMilliseconds": _field(lambda m: m.microsecond // 1000),
}


def _whole(unit: timedelta) -> Any:
    unit_us = unit // _MICROSECOND

    def length_in(length: timedelta) -> int:
        microseconds = length // _MICROSECOND
        whole = abs(microseconds) // unit_us
        return -whole if microseconds < 0 else whole

    return length_in


#: duration accessor -> its length in whole units, truncated toward zero
DURATION_FIELDS = {
    "getHours": _whole(timedelta(hours=1)),
    "getMinutes": _whole(timedelta(minutes=1)),
    "getSeconds": _whole(timedelta(seconds=1)),
    "getMilliseconds": _whole(timedelta(milliseconds=1)),
}


def identity(value: Any) -> Any:
    return value
