from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attributes.events import InvalidEvent, decode_event, event_time_ms, iso_from_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Y2K_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
BROKER_MS = 123_456


def decode(**fields: Any) -> Any:
    return decode_event(orjson.dumps(fields))


def exact_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def test_decode_track() -> None:
    event = decode(
        type="track",
        event="Order Completed",
        messageId="m-1",
        userId="u-1",
        properties={"revenue": 19.99, "items": [{"sku": "a"}]},
        context={"ip": "10.0.0.1"},
    )
    assert event.type == "track"
    assert event.event == "Order Completed"
    assert event.messageId == "m-1"
    assert event.user_id == "u-1"
    assert event.anonymous_id is None
    assert event.properties == {"revenue": 19.99, "items": [{"sku": "a"}]}
    assert event.context == {"ip": "10.0.0.1"}
    assert event.traits == {}


def test_decode_identify() -> None:
    event = decode(type="identify", anonymousId="a-1", traits={"plan": "pro", "seats": 3})
    assert event.type == "identify"
    assert event.event is None
    assert event.user_id is None
    assert event.anonymous_id == "a-1"
    assert event.traits == {"plan": "pro", "seats": 3}


def test_decode_page_ignores_fields_outside_the_envelope() -> None:
    event = decode(type="page", userId="u-1", name="Home", properties={"path": "/"})
    assert event.type == "page"
    assert event.properties == {"path": "/"}


def test_decoded_events_do_not_share_default_dicts() -> None:
    first = decode(type="page", userId="u-1")
    first.properties["x"] = 1
    assert decode(type="page", userId="u-2").properties == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"this line is not JSON", "not a valid event"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"type": "track", "event": "x", "userId": ["u-1"]}', "$.userId"),
        (b'{"type": "track", "event": "x", "anonymousId": {"id": 1}}', "$.anonymousId"),
        (b'{"type": "page", "userId": true}', "$.userId"),
        (b'{"type": "page", "userId": 1.5}', "$.userId"),
        (b'{"type": "page", "userId": "u-1", "properties": []}', "$.properties"),
        (b'{"type": "page", "userId": "u-1", "timestamp": "yesterday"}', "$.timestamp"),
        (b'{"type": "click", "userId": "u-1"}', "$.type"),
        (b'{"userId": "u-1"}', "`type`"),
        (b'{"type": "track", "userId": "u-1"}', "track event has no 'event' name"),
        (b'{"type": "track", "event": "", "userId": "u-1"}', "track event has no 'event' name"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'"properties": {"revenue": 9223372036854775808}', "properties.revenue"),
        (b'"properties": {"revenue": -9223372036854775809}', "properties.revenue"),
        (
            b'"properties": {"items": [{"qty": 1}, {"qty": 99999999999999999999}]}',
            "properties.items.1.qty",
        ),
        (b'"traits": {"seats": 18446744073709551616}', "traits.seats"),
        (b'"context": {"device": {"id": 123456789012345678901234567890}}', "context.device.id"),
    ],
)
def test_integers_beyond_64_bits_are_rejected(body: bytes, path: str) -> None:
    """Stored states and views hold 64-bit integers; anything larger would fail the write."""
    raw = b'{"type": "identify", "userId": "u-1", ' + body + b"}"
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw)
    assert str(caught.value) == f"integer at {path} does not fit in 64 bits"


def test_64_bit_integers_and_long_digit_strings_are_fine() -> None:
    event = decode_event(
        b'{"type": "identify", "userId": 12345678901234567890123, "traits": {'
        b'"max": 9223372036854775807, "min": -9223372036854775808,'
        b' "phone": "12345678901234567890", "big": 12345678901234567890.5}}'
    )
    assert event.traits == {
        "max": 2**63 - 1,
        "min": -(2**63),
        "phone": "12345678901234567890",
        "big": 12345678901234567890.5,
    }
    assert event.user_id == "12345678901234567890123"  # an id, not a number


def test_numeric_ids_are_normalised_to_strings() -> None:
    event = decode(type="page", userId=42, anonymousId=0)
    assert event.user_id == "42"
    assert event.anonymous_id == "0"


def test_ids_are_stripped() -> None:
    event = decode(type="page", userId="  u-1 ", anonymousId="\ta-1\n")
    assert (event.user_id, event.anonymous_id) == ("u-1", "a-1")


def test_blank_id_counts_as_missing() -> None:
    event = decode(type="page", userId="   ", anonymousId="a-1")
    assert event.user_id is None
    assert event.anonymous_id == "a-1"
    both_blank = decode(type="page", userId=" ", anonymousId="")
    assert (both_blank.user_id, both_blank.anonymous_id) == (None, None)


def test_track_needs_a_name_but_other_types_do_not() -> None:
    for kind in ("identify", "page", "screen", "alias", "group"):
        assert decode(type=kind, userId="u-1").event is None


def test_event_time_is_the_timestamp() -> None:
    event = decode(type="page", userId="u", timestamp="2000-01-01T00:00:00.123Z")
    assert event_time_ms(event, BROKER_MS) == Y2K_MS + 123


def test_event_time_honours_the_offset() -> None:
    event = decode(type="page", userId="u", timestamp="2000-01-01T01:00:00+01:00")
    assert event_time_ms(event, BROKER_MS) == Y2K_MS


def test_timestamp_wins_over_original_timestamp() -> None:
    event = decode(
        type="page",
        userId="u",
        timestamp="2000-01-01T00:00:00Z",
        originalTimestamp="1999-12-31T23:59:00Z",
    )
    assert event_time_ms(event, BROKER_MS) == Y2K_MS


def test_event_time_falls_back_to_original_timestamp() -> None:
    event = decode(type="page", userId="u", originalTimestamp="2000-01-01T00:00:01Z")
    assert event_time_ms(event, BROKER_MS) == Y2K_MS + 1000


def test_event_time_falls_back_to_the_broker_timestamp() -> None:
    assert event_time_ms(decode(type="page", userId="u"), BROKER_MS) == BROKER_MS


@pytest.fixture
def local_time_in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_in_new_york")
def test_naive_timestamp_is_utc_not_local_time() -> None:
    event = decode(type="page", userId="u", timestamp="2000-01-01T00:00:02")
    assert event_time_ms(event, BROKER_MS) == Y2K_MS + 2000


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2004, 2, 1, 12, 0, 0, 1_000, tzinfo=UTC),
        datetime(2039, 1, 17, 14, 53, 12, 706_000, tzinfo=UTC),
    ],
)
def test_event_time_is_exact(moment: datetime) -> None:
    event = decode(type="page", userId="u", timestamp=moment.isoformat())
    assert event_time_ms(event, BROKER_MS) == exact_ms(moment)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (Y2K_MS + 7, "2000-01-01T00:00:00.007Z"),
        (Y2K_MS - 1, "1999-12-31T23:59:59.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_iso_from_ms(ms: int, text: str) -> None:
    assert iso_from_ms(ms) == text


@given(st.integers(min_value=-(10**12), max_value=253_402_300_799_999))  # up to year 9999
def test_iso_from_ms_names_the_same_instant(ms: int) -> None:
    text = iso_from_ms(ms)
    assert text.endswith("Z")
    assert exact_ms(datetime.fromisoformat(text)) == ms


# 2005 .. 2037: a range the float rounding bug above does not reach.
@given(st.integers(min_value=1_104_537_600_000, max_value=2_145_916_799_999))
def test_event_time_round_trips_iso_from_ms(ms: int) -> None:
    event = decode(type="page", userId="u", timestamp=iso_from_ms(ms))
    assert event_time_ms(event, BROKER_MS) == ms
