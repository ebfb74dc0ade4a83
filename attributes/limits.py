"""Limits on what one event may be, so that no event can stop or slow the others.

A worker reads whatever producers send. Without limits, one hostile or broken event
costs everyone: an event nested 1,500 deep overflows the recursion of every walker
that follows (decoding, filters, views), a 50 MB event or a 1 MB identity value
becomes a Redis key and an index entry, an event dated in 2999 keeps a window bucket
alive forever. Each limit here is checked before the event can reach any of that,
and an event over one is dead-lettered alone, with a reason that names the limit and
the setting that raises it.

Each check returns the reason, or None: cheap enough to run on every event (the
depth check walks only events with more brackets than the depth allowed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: the settings that raise each limit, named in the reasons
_SETTING = {
    "bytes": "TRAITFLOW_MAX_EVENT_BYTES",
    "depth": "TRAITFLOW_MAX_EVENT_DEPTH",
    "id": "TRAITFLOW_MAX_ID_LENGTH",
    "ids": "TRAITFLOW_MAX_IDENTITIES_PER_EVENT",
    "skew": "TRAITFLOW_MAX_FUTURE_SKEW_S",
}


@dataclass(frozen=True, slots=True)
class EventLimits:
    #: bytes of one record's value (Segment refuses calls over 32 KB)
    max_bytes: int = 256 * 1024
    #: nesting of JSON objects and arrays (the envelope itself is 1)
    max_depth: int = 32
    #: characters of an identity value or a messageId (what the API reads with)
    max_id_length: int = 512
    #: identities one event carries, over every entity (alias `previousId`s included)
    max_identities: int = 32
    #: how far in the future an event's time may be (ms); None: no limit
    max_future_skew_ms: int | None = 24 * 3_600_000


def nesting_depth(value: Any) -> int:
    """The deepest nesting of dicts and lists in `value` (a scalar is 0). Iterative:
    a hostile value must not overflow the stack of the check meant to stop it."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def size_problem(raw: bytes, limits: EventLimits) -> str | None:
    """Why `raw` is too big to decode, or None."""
    if len(raw) > limits.max_bytes:
        return f"event is {len(raw)} bytes; the limit is {limits.max_bytes} ({_SETTING['bytes']})"
    return None


def depth_problem(raw: bytes, parts: Sequence[Any], limits: EventLimits) -> str | None:
    """Why the decoded free-form `parts` of event `raw` (properties, traits, context:
    each one level below the envelope) nest too deep, or None. Only an event with more
    opening brackets than the limit can be too deep, so most are never walked."""
    if raw.count(b"{") + raw.count(b"[") <= limits.max_depth:
        return None
    depth = 1 + max((nesting_depth(part) for part in parts), default=0)
    if depth <= limits.max_depth:
        return None
    return too_deep(depth, limits)


def too_deep(depth: int | None, limits: EventLimits) -> str:
    """The reason for an event nested `depth` deep (None: deeper than the decoder
    follows, so uncounted)."""
    levels = f"{depth} levels of" if depth is not None else "deeper than the decoder follows:"
    return (
        f"event nests {levels} objects and arrays; the limit is {limits.max_depth} "
        f"({_SETTING['depth']})"
    )


def identity_problem(
    identities: Sequence[tuple[str, str]], message_id: str | None, limits: EventLimits
) -> str | None:
    """Why the identities (and messageId) of an event are over the limits, or None."""
    if len(identities) > limits.max_identities:
        return (
            f"event carries {len(identities)} identities; the limit is "
            f"{limits.max_identities} ({_SETTING['ids']})"
        )
    for kind, value in identities:
        if len(value) > limits.max_id_length:
            return (
                f"identity {kind} is {len(value)} characters; the limit is "
                f"{limits.max_id_length} ({_SETTING['id']})"
            )
    if message_id is not None and len(message_id) > limits.max_id_length:
        return (
            f"messageId is {len(message_id)} characters; the limit is "
            f"{limits.max_id_length} ({_SETTING['id']})"
        )
    return None


def time_problem(event_ms: int, now_ms: int, limits: EventLimits) -> str | None:
    """Why an event's time is too far in the future of `now_ms`, or None."""
    skew = limits.max_future_skew_ms
    if skew is None or event_ms <= now_ms + skew:
        return None
    ahead = (event_ms - now_ms) / 1000
    return (
        f"event time is {ahead:.0f} s in the future; the limit is {skew / 1000:.0f} s "
        f"({_SETTING['skew']})"
    )
