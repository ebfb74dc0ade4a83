"""The dead-letter sink's retry and parking policy, with a fake producer and parking
(the real topic and Redis: tests/integration/test_dead_letters*.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from streams.dead_letters import (
    OFFSET,
    PARTITION,
    REASON,
    TOPIC,
    Parking,
    TopicDeadLetters,
    describe,
    is_retriable,
    letter_from_entry,
    letter_from_record,
    letter_headers,
    parked_fields,
    root_cause,
)
from streams.records import Record

pytestmark = pytest.mark.anyio


class Wrapped(Exception):
    """What Faust raises around aiokafka's errors (`ProducerSendError ... from exc`)."""


def wrapped(error: Exception) -> Exception:
    try:
        raise Wrapped(f"Error while sending: {error!r}") from error
    except Wrapped as outer:
        return outer


class FakeTopic:
    """Delivers a letter unless `failures` has errors queued for its value (one per
    try); `hang` values are never delivered."""

    def __init__(self) -> None:
        self.failures: dict[bytes, list[Exception]] = {}
        self.hang: set[bytes] = set()
        self.delivered: list[tuple[bytes, dict[str, bytes]]] = []
        self.tries: dict[bytes, int] = {}

    async def produce(self, value: bytes, headers: Mapping[str, bytes]) -> Awaitable[object]:
        self.tries[value] = self.tries.get(value, 0) + 1
        queued = self.failures.get(value)
        if queued:
            raise queued.pop(0)
        delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if value not in self.hang:
            delivery.set_result(None)
            self.delivered.append((value, dict(headers)))
        return delivery


class FakeParking(Parking):
    def __init__(self, broken: bool = False) -> None:
        self.letters: dict[bytes, Mapping[str, bytes]] = {}
        self.broken = broken

    async def park(self, letters: Sequence[Mapping[str, bytes]]) -> int:
        if self.broken:
            raise ConnectionError("Redis is away")
        for letter in letters:
            origin = b"/".join((letter["topic"], letter["partition"], letter["offset"]))
            self.letters.setdefault(origin, letter)
        return len(self.letters)


def told_list() -> list[tuple[list[str], int]]:
    """What `on_parked` was told, call by call."""
    return []


def record(offset: int, value: bytes) -> Record:
    return Record("events", 2, offset, value, 1_700_000_000_000 + offset)


def sink(
    topic: FakeTopic, parking: Parking, told: list[tuple[list[str], int]], **options: float
) -> TopicDeadLetters:
    return TopicDeadLetters(
        "dead",
        topic.produce,
        parking,
        attempts=int(options.get("attempts", 3)),
        timeout_s=options.get("timeout_s", 1.0),
        backoff_s=0.01,
        on_parked=lambda errors, now: told.append((list(errors), now)),
        wall_clock=lambda: 1_800_000_000.0,
    )


async def test_delivered_letters_carry_reason_and_origin_and_nothing_is_parked() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    await sink(topic, parking, told).send([(record(7, b"bad"), "not a valid event")])
    assert topic.delivered == [
        (b"bad", {REASON: b"not a valid event", TOPIC: b"events", PARTITION: b"2", OFFSET: b"7"})
    ]
    assert parking.letters == {}
    assert told == []


async def test_a_record_too_large_is_parked_at_once_and_the_others_delivered() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    topic.failures[b"huge"] = [wrapped(MessageSizeTooLargeError("over max_request_size"))]
    letters = [(record(1, b"huge"), "event is over 262144 bytes"), (record(2, b"x"), "no id")]
    await sink(topic, parking, told).send(letters)
    assert topic.tries[b"huge"] == 1  # permanent: not tried again
    assert [value for value, _ in topic.delivered] == [b"x"]
    parked = parking.letters[b"events/2/1"]
    assert parked["value"] == b"huge"
    assert parked["reason"] == b"event is over 262144 bytes"
    assert parked["error"].startswith(b"MessageSizeTooLargeError")
    assert parked["dead_letter_topic"] == b"dead"
    assert parked["time"] == b"1800000000000"
    assert told == [(["MessageSizeTooLargeError"], 1)]


async def test_a_transient_failure_is_tried_again_and_delivered() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    topic.failures[b"x"] = [NotLeaderForPartitionError(), KafkaTimeoutError()]
    await sink(topic, parking, told).send([(record(1, b"x"), "no id")])
    assert topic.tries[b"x"] == 3
    assert [value for value, _ in topic.delivered] == [b"x"]
    assert parking.letters == {}


async def test_tries_are_bounded_then_the_letter_is_parked() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    topic.failures[b"x"] = [NotLeaderForPartitionError() for _ in range(10)]
    await sink(topic, parking, told, attempts=4).send([(record(1, b"x"), "no id")])
    assert topic.tries[b"x"] == 4
    assert list(parking.letters) == [b"events/2/1"]
    assert told == [(["NotLeaderForPartitionError"], 1)]


async def test_a_delivery_that_never_comes_is_parked_within_the_time_budget() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    topic.hang.add(b"stuck")
    started = time.monotonic()
    await sink(topic, parking, told, timeout_s=0.3).send([(record(1, b"stuck"), "no id")])
    assert time.monotonic() - started < 0.6
    assert topic.tries[b"stuck"] == 3
    assert parking.letters[b"events/2/1"]["error"].startswith(b"TimeoutError: not delivered within")


async def test_a_letter_is_parked_once_per_origin_when_its_batch_is_retried() -> None:
    topic, parking, told = FakeTopic(), FakeParking(), told_list()
    dead = sink(topic, parking, told)
    for _ in range(2):
        topic.failures[b"huge"] = [MessageSizeTooLargeError()]
        await dead.send([(record(1, b"huge"), "too big")])
    assert len(parking.letters) == 1
    assert told[-1] == (["MessageSizeTooLargeError"], 1)


async def test_when_parking_fails_too_send_raises_so_the_batch_is_retried() -> None:
    topic, told = FakeTopic(), told_list()
    topic.failures[b"huge"] = [MessageSizeTooLargeError()]
    with pytest.raises(ConnectionError):
        await sink(topic, FakeParking(broken=True), told).send([(record(1, b"huge"), "big")])
    assert told == []


def test_errors_are_judged_by_their_root_cause() -> None:
    assert not is_retriable(wrapped(MessageSizeTooLargeError()))
    assert not is_retriable(TopicAuthorizationFailedError())
    assert is_retriable(wrapped(NotLeaderForPartitionError()))
    assert is_retriable(KafkaTimeoutError())  # the client says no; another try may do
    assert is_retriable(TimeoutError())
    assert is_retriable(RuntimeError("unknown"))
    error = wrapped(MessageSizeTooLargeError("too big"))
    assert isinstance(root_cause(error), MessageSizeTooLargeError)
    assert describe(error).startswith("MessageSizeTooLargeError: ")
    assert describe(TimeoutError()) == "TimeoutError: not delivered in time"


def test_letters_read_back_as_they_were_written() -> None:
    origin = record(42, b'{"type": "track"}')
    headers = list(letter_headers(origin, "track event has no 'event' name").items())
    letter = letter_from_record(3, 17, 1_700_000_000_123, origin.value, headers)
    assert (letter.id, letter.parked, letter.origin) == ("3:17", False, "events/2/42")
    assert letter.reason == "track event has no 'event' name"
    assert letter.time_ms == 1_700_000_000_123
    assert letter.value == origin.value

    fields = parked_fields(origin, "too big", "MessageSizeTooLargeError: x", "dead", 1_800_000)
    parked = letter_from_entry(b"1800000-0", {k.encode(): v for k, v in fields.items()})
    assert (parked.id, parked.parked, parked.origin) == ("1800000-0", True, "events/2/42")
    assert (parked.reason, parked.error, parked.time_ms) == (
        "too big",
        "MessageSizeTooLargeError: x",
        1_800_000,
    )
    assert parked.value == origin.value


def test_a_foreign_record_on_the_topic_reads_as_an_unknown_origin() -> None:
    letter = letter_from_record(0, 5, 0, None, [("other", b"x")])
    assert (letter.topic, letter.partition, letter.offset, letter.reason) == ("", -1, -1, "")
    assert letter.value == b""
