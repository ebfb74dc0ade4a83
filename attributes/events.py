"""The event envelope: the Segment / RudderStack event spec, decoded and checked.

Real SDKs and RudderStack's Kafka destination emit this shape, so it is the only
shape the pipeline accepts. Decoding is strict about types (a number where an id
string belongs is normalised, a list is not) because everything downstream trusts
the envelope; the free-form parts (`properties`, `traits`, `context`) stay dicts.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from attributes.errors import DataError
from attributes.limits import EventLimits, depth_problem, size_problem, too_deep

#: the Segment spec's types, and `delete`: a source retracting what it said of a profile
#: (Hightouch: a row removed from a sync); what it removes is the source's setting;
#: `erase`: a person erased, tombstone left (`attributes.erasure`)
EventType = Literal["track", "identify", "page", "screen", "alias", "group", "delete", "erase"]


class InvalidEvent(DataError):
    """An event that cannot enter the pipeline; the message is the dead-letter reason."""


class Event(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    type: EventType
    event: str | None = None
    messageId: str | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    previousId: str | int | None = None
    #: a `group` call's account (B2B: the company a user belongs to)
    groupId: str | int | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None

    @property
    def user_id(self) -> str | None:
        """userId as a non-empty string, or None (normalised once by decode_event)."""
        return self.userId  # type: ignore[return-value]

    @property
    def anonymous_id(self) -> str | None:
        return self.anonymousId  # type: ignore[return-value]


_decoder = msgspec.json.Decoder(Event)
DEFAULT_LIMITS = EventLimits()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

#: Stored states and views hold 64-bit integers at most (msgpack, JSON consumers).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: Every ASCII digit to "0", every other byte to ".": a run of 19 zeros in the translated
#: event is a run of 19 digits in it (at C speed, cheaper than a regex search).
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_LONG_RUN = b"0" * 19


def _out_of_range_int(node: Any, path: str) -> str | None:
    """The path of the first integer outside 64 bits under `node`, or None."""
    if isinstance(node, int) and not isinstance(node, bool):
        return path if not _INT_MIN <= node <= _INT_MAX else None
    if isinstance(node, dict):
        children: Any = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return None
    for key, child in children:
        found = _out_of_range_int(child, f"{path}.{key}")
        if found:
            return found
    return None


def _id_or_none(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def decode_event(raw: bytes, limits: EventLimits = DEFAULT_LIMITS) -> Event:
    """Decode one JSON event and check the rules the spec sets beyond types, and the
    size and depth `limits`.

    Raises InvalidEvent with a reason a person can act on.
    """
    if len(raw) > limits.max_bytes and (problem := size_problem(raw, limits)):
        raise InvalidEvent(problem)
    try:
        event = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not a valid event: {exc}") from None
    except RecursionError:
        raise InvalidEvent(too_deep(None, limits)) from None
    if problem := depth_problem(raw, (event.properties, event.traits, event.context), limits):
        raise InvalidEvent(problem)
    event.userId = _id_or_none(event.userId)
    event.anonymousId = _id_or_none(event.anonymousId)
    event.groupId = _id_or_none(event.groupId)
    if event.type == "track" and not event.event:
        raise InvalidEvent("track event has no 'event' name")
    if _LONG_RUN in raw.translate(_DIGITS_AS_ZEROS):  # the walk runs only for long numbers
        for part in ("properties", "traits", "context"):
            path = _out_of_range_int(getattr(event, part), part)
            if path:
                raise InvalidEvent(f"integer at {path} does not fit in 64 bits")
    return event


def event_time_ms(event: Event, fallback_ms: int) -> int:
    """Event time in epoch milliseconds: `timestamp`, else `originalTimestamp`, else
    the fallback (the broker's record timestamp). Naive datetimes are taken as UTC."""
    moment = event.timestamp or event.originalTimestamp
    if moment is None:
        return fallback_ms
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # integer arithmetic: float seconds * 1000 is 1 ms short for some instants
    return (moment - _EPOCH) // _ONE_MS


def iso_from_ms(ms: int) -> str:
    """Render epoch milliseconds as an RFC 3339 UTC string with millisecond precision.

    Every served view carries two of these: the date is cached (a cache of seconds
    thrashes when event times spread), the time of day is arithmetic."""
    day, in_day = divmod(ms, 86_400_000)
    seconds, millis = divmod(in_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{_iso_date(day)}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
