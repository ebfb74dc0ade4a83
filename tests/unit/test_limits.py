from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attributes.events import InvalidEvent, decode_event
from attributes.limits import (
    EventLimits,
    depth_problem,
    identity_problem,
    nesting_depth,
    size_problem,
    time_problem,
)

LIMITS = EventLimits()
HOUR_MS = 3_600_000


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """A track event whose properties.a is `depth` arrays deep."""
    return (
        b'{"type":"track","event":"x","userId":"u","properties":{"a":'
        + b"[" * depth
        + inner
        + b"]" * depth
        + b"}}"
    )


def test_an_event_over_the_size_limit_names_it() -> None:
    raw = b'{"type":"page","userId":"u","properties":{"p":"' + b"x" * 300_000 + b'"}}'
    assert size_problem(raw, LIMITS) == (
        f"event is {len(raw)} bytes; the limit is 262144 (TRAITFLOW_MAX_EVENT_BYTES)"
    )
    assert size_problem(raw, EventLimits(max_bytes=len(raw))) is None
    with pytest.raises(InvalidEvent, match="TRAITFLOW_MAX_EVENT_BYTES"):
        decode_event(raw)


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ({}, 1), ([[]], 2), ({"a": [1, {"b": [[]]}], "c": {}}, 5), ([[1], [[[2]]]], 4)],
)
def test_nesting_depth_counts_dicts_and_lists(value: object, depth: int) -> None:
    assert nesting_depth(value) == depth


def test_the_envelope_is_the_first_level() -> None:
    # properties (2) holds a (3 ... 32): 30 arrays deep is the most the default allows
    assert decode_event(nested(30)).properties["a"] is not None
    with pytest.raises(InvalidEvent) as raised:
        decode_event(nested(31))
    assert str(raised.value) == (
        "event nests 33 levels of objects and arrays; the limit is 32 (TRAITFLOW_MAX_EVENT_DEPTH)"
    )


def test_an_event_deeper_than_the_decoder_follows_is_invalid_not_a_crash() -> None:
    """1,500 arrays stopped the whole worker once (a RecursionError nobody caught)."""
    for depth in (1_500, 100_000):
        with pytest.raises(InvalidEvent, match="deeper than the decoder follows"):
            decode_event(nested(depth))
    # a raised limit still ends in a reason, never in a RecursionError
    with pytest.raises(InvalidEvent, match="TRAITFLOW_MAX_EVENT_DEPTH"):
        decode_event(nested(5_000), EventLimits(max_depth=10_000))


def test_brackets_inside_strings_do_not_count() -> None:
    raw = orjson.dumps(
        {"type": "page", "userId": "u", "properties": {"q": "[[[[{{{{" * 20, "l": [[1]]}}
    )
    event = decode_event(raw)
    assert depth_problem(raw, (event.properties, event.traits, event.context), LIMITS) is None


@given(st.recursive(st.integers(0, 9), lambda inner: st.lists(inner, max_size=3), max_leaves=20))
def test_depth_is_checked_exactly_at_the_limit(value: object) -> None:
    raw = orjson.dumps({"type": "page", "userId": "u", "properties": {"v": value}})
    depth = 2 + nesting_depth(value)  # the envelope, properties, then the value
    assert depth_problem(raw, ({"v": value},), EventLimits(max_depth=depth)) is None
    if depth > 2:
        assert depth_problem(raw, ({"v": value},), EventLimits(max_depth=depth - 1)) is not None


def test_identity_values_and_message_ids_over_the_length_limit() -> None:
    limits = EventLimits(max_id_length=8)
    assert identity_problem([("user_id", "u" * 8)], "m" * 8, limits) is None
    assert identity_problem([("user_id", "u"), ("email", "e" * 9)], None, limits) == (
        "identity email is 9 characters; the limit is 8 (TRAITFLOW_MAX_ID_LENGTH)"
    )
    assert identity_problem([("user_id", "u")], "m" * 9, limits) == (
        "messageId is 9 characters; the limit is 8 (TRAITFLOW_MAX_ID_LENGTH)"
    )


def test_identities_per_event_over_the_limit() -> None:
    ids = [(f"t{n}", "v") for n in range(3)]
    assert identity_problem(ids, None, EventLimits(max_identities=3)) is None
    assert identity_problem(ids, None, EventLimits(max_identities=2)) == (
        "event carries 3 identities; the limit is 2 (TRAITFLOW_MAX_IDENTITIES_PER_EVENT)"
    )


def test_a_time_too_far_in_the_future() -> None:
    now = 1_000 * HOUR_MS
    assert time_problem(now + 24 * HOUR_MS, now, LIMITS) is None
    assert time_problem(now - 10_000 * HOUR_MS, now, LIMITS) is None  # the past is fine
    assert time_problem(now + 25 * HOUR_MS, now, LIMITS) == (
        "event time is 90000 s in the future; the limit is 86400 s (TRAITFLOW_MAX_FUTURE_SKEW_S)"
    )
    assert time_problem(now + 10**9, now, EventLimits(max_future_skew_ms=None)) is None
