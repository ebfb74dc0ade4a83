"""Dead letters: records the worker cannot process, with their reason, on the
dead-letter topic, or *parked* in Redis when that topic refuses them.

Why parking. A batch is acked only once its dead letters are durable (the
`DeadLetterSink` contract), so a dead letter the producer cannot deliver (a record
over the producer's max request size, a dead-letter topic that is missing or that an
ACL refuses) used to have its batch retried forever: the partitions stalled. Now a
batch's letters are produced together, and a failed one is tried again, at most
`TRAITFLOW_DEAD_LETTER_ATTEMPTS` times within `TRAITFLOW_DEAD_LETTER_TIMEOUT_S` seconds
in all (an error the client calls permanent, such as a record too large, is not tried
again). What is still undelivered is parked in a Redis stream with the produce error,
counted and logged, and the batch goes on. `traitflow dead-letters` lists, shows and
replays both kinds.

Why Redis and no local spool. The parked write must be durable before the batch is
acked, and Redis is where the batch's own effect is made durable: a parked letter is
exactly as safe as the profiles written with it, visible to the CLI from any machine,
and survives the worker's container. When Redis is the one failing, a spool would not
keep ingestion going: the batch's profile commit fails the same way, so the batch is
retried (the parking error goes up like any store error, `process_until_done`) and
nothing is acked or lost. A spool on the worker's disk would add a second place to
look, lost with the container.

Once per origin. A retried batch sends its dead letters again. Parking is keyed by
the letter's origin (topic, partition, offset), so it parks each record once; the
topic itself stays at-least-once (a replay publishes each origin once per run).

Redis keys (defined in `traitflow.key_layout.KeyLayout`), for prefix `tf`:

    tf:dlp          stream  parked dead letters, one entry each: value (the original
                            bytes), reason, topic, partition, offset (the origin),
                            timestamp (the record's, epoch ms), error (why the
                            dead-letter topic refused it), dead_letter_topic, time
                            (when it was parked, epoch ms)
    tf:dlp:o        hash    origin "topic/partition/offset" -> the id of its entry
    tf:dlr          hash    "{dead-letter topic}/{partition}" -> which of that
                            partition's letters were replayed (`traitflow.replay`)
    tf:dlr:lock     string  the token of the replay in progress (expires)
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from streams.records import DeadLetterSink, Record
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import Redis, async_client

log = logging.getLogger(__name__)

REASON = "traitflow.error.reason"
TOPIC = "traitflow.error.topic"
PARTITION = "traitflow.error.partition"
OFFSET = "traitflow.error.offset"

#: Enqueue one record on the dead-letter topic, (value, headers), and return its
#: delivery; either step may raise.
Produce = Callable[[bytes, Mapping[str, bytes]], Awaitable[Awaitable[object]]]


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as read back, from the topic or parked."""

    #: "partition:offset" on the dead-letter topic, or the parked entry's stream id
    id: str
    parked: bool
    #: the origin: where the record was consumed from
    topic: str
    partition: int
    offset: int
    reason: str
    value: bytes
    #: when it was dead-lettered (the topic record's timestamp) or parked, epoch ms
    time_ms: int
    #: parked only: why the dead-letter topic refused it
    error: str = ""
    #: topic letters: every header as it is
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def letter_headers(record: Record, reason: str) -> dict[str, bytes]:
    """The reason and the origin, as headers (the convention Kafka Connect's DLQ uses)."""
    return {
        REASON: reason.encode(),
        TOPIC: record.topic.encode(),
        PARTITION: str(record.partition).encode(),
        OFFSET: str(record.offset).encode(),
    }


def _int(raw: bytes | None, default: int = -1) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def letter_from_record(
    partition: int,
    offset: int,
    timestamp_ms: int,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> Letter:
    """A record of the dead-letter topic; one without our headers (someone else wrote
    it) reads as an unknown origin."""
    found = dict(headers)
    return Letter(
        id=f"{partition}:{offset}",
        parked=False,
        topic=found.get(TOPIC, b"").decode(errors="replace"),
        partition=_int(found.get(PARTITION)),
        offset=_int(found.get(OFFSET)),
        reason=found.get(REASON, b"").decode(errors="replace"),
        value=value or b"",
        time_ms=timestamp_ms,
        headers=tuple(headers),
    )


def parked_fields(
    record: Record, reason: str, error: str, dead_letter_topic: str, now_ms: int
) -> dict[str, bytes]:
    return {
        "value": record.value or b"",
        "reason": reason.encode(),
        "topic": record.topic.encode(),
        "partition": str(record.partition).encode(),
        "offset": str(record.offset).encode(),
        "timestamp": str(record.timestamp_ms).encode(),
        "error": error.encode(),
        "dead_letter_topic": dead_letter_topic.encode(),
        "time": str(now_ms).encode(),
    }


def letter_from_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Letter:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Letter(
        id=text,
        parked=True,
        topic=fields.get(b"topic", b"").decode(errors="replace"),
        partition=_int(fields.get(b"partition")),
        offset=_int(fields.get(b"offset")),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
        value=fields.get(b"value", b""),
        time_ms=_int(fields.get(b"time"), 0),
        error=fields.get(b"error", b"").decode(errors="replace"),
    )


def root_cause(error: BaseException) -> BaseException:
    """The error under the wrappers (Faust raises `ProducerSendError` from aiokafka's)."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def is_retriable(error: BaseException) -> bool:
    """Whether another try may deliver: timeouts and what the Kafka client calls
    retriable, or does not judge; not a record too large, an invalid topic, a refusal."""
    cause = root_cause(error)
    if isinstance(cause, TimeoutError) or type(cause).__name__ == "KafkaTimeoutError":
        return True
    return bool(getattr(cause, "retriable", True))


def describe(error: BaseException) -> str:
    cause = root_cause(error)
    text = str(cause) or ("not delivered in time" if isinstance(cause, TimeoutError) else "")
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class Parking(ABC):
    """Where dead letters go that the dead-letter topic refused."""

    @abstractmethod
    async def park(self, letters: Sequence[Mapping[str, bytes]]) -> int:
        """Keep each letter (`parked_fields`) once per origin; return only once they
        are durable, with how many letters are parked now."""


# Parks one letter unless its origin is parked already. KEYS: the stream, the origin
# hash; ARGV[1]: the origin, then the entry's field/value pairs. Returns the number of
# parked letters.
_PARK = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
  redis.call('HSET', KEYS[2], ARGV[1], id)
end
return redis.call('XLEN', KEYS[1])
"""


def _letters(entries: Any) -> list[Letter]:
    """XRANGE's reply (which redis-py types loosely) as letters."""
    return [letter_from_entry(entry_id, fields) for entry_id, fields in entries or ()]


class RedisParking(Parking):
    """Parked dead letters in a Redis stream (`KeyLayout.parked_letters`)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = KeyLayout(prefix)
        self._park = client.register_script(_PARK)

    @classmethod
    def from_url(cls, url: Redis, prefix: str) -> RedisParking:
        """`url`: settings, or a URL alone (`traitflow.redis_client`)."""
        return cls(async_client(url, decode_responses=False), prefix)

    async def close(self) -> None:
        await self.client.aclose()

    async def park(self, letters: Sequence[Mapping[str, bytes]]) -> int:
        if not letters:
            return await self.count()
        keys = [self.keys.parked_letters, self.keys.parked_origins]
        async with self.client.pipeline(transaction=False) as pipe:
            for letter in letters:
                origin = b"/".join((letter["topic"], letter["partition"], letter["offset"]))
                pairs = [part for name, value in letter.items() for part in (name, value)]
                await self._park(keys=keys, args=[origin, *pairs], client=pipe)
            counts = await pipe.execute()
        return int(counts[-1])

    async def count(self) -> int:
        return int(await self.client.xlen(self.keys.parked_letters))

    async def page(self, after: str | None = None, count: int = 100) -> list[Letter]:
        """Up to `count` parked letters, oldest first, after the entry id `after`."""
        start = f"({after}" if after else "-"
        return _letters(await self.client.xrange(self.keys.parked_letters, start, "+", count=count))

    async def all(self) -> list[Letter]:
        letters: list[Letter] = []
        while page := await self.page(letters[-1].id if letters else None, 500):
            letters += page
        return letters

    async def get(self, letter_id: str) -> Letter | None:
        found = _letters(await self.client.xrange(self.keys.parked_letters, letter_id, letter_id))
        return found[0] if found else None

    async def remove(self, letters: Sequence[Letter]) -> None:
        """Forget parked letters (once they are re-published)."""
        if not letters:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xdel(self.keys.parked_letters, *(letter.id for letter in letters))
            pipe.hdel(self.keys.parked_origins, *(letter.origin for letter in letters))
            await pipe.execute()


#: Told of letters just parked: (the root errors' type names, letters parked now).
OnParked = Callable[[Sequence[str], int], None]


class TopicDeadLetters(DeadLetterSink):
    """Dead letters to a Kafka topic: the original bytes as value, the reason and the
    origin as headers; parked in `parking` when the topic refuses them (see the module
    docstring for the retry policy)."""

    def __init__(
        self,
        topic: str,
        produce: Produce,
        parking: Parking,
        *,
        attempts: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.1,
        on_parked: OnParked | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1 or timeout_s <= 0:
            raise ValueError("a dead letter needs at least one attempt and some time")
        self.topic = topic
        self.produce = produce
        self.parking = parking
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.on_parked = on_parked
        self.clock = clock
        self.wall_clock = wall_clock

    async def send(self, records: Sequence[tuple[Record, str]]) -> None:
        undelivered = await self._produce(records)
        if not undelivered:
            return
        now_ms = int(self.wall_clock() * 1000)
        letters = [
            parked_fields(record, reason, describe(undelivered[i]), self.topic, now_ms)
            for i, (record, reason) in enumerate(records)
            if i in undelivered
        ]
        parked_now = await self.parking.park(letters)  # raises: the batch is retried
        errors = [type(root_cause(undelivered[i])).__name__ for i in sorted(undelivered)]
        first = records[min(undelivered)][0]
        log.warning(
            "the dead-letter topic %s refused %d letters (%s, first from %s/%d@%d): parked "
            "in Redis, %d parked now; see `traitflow dead-letters list --parked`",
            self.topic,
            len(letters),
            describe(undelivered[min(undelivered)]),
            first.topic,
            first.partition,
            first.offset,
            parked_now,
        )
        if self.on_parked is not None:
            self.on_parked(errors, parked_now)

    async def _produce(self, records: Sequence[tuple[Record, str]]) -> dict[int, BaseException]:
        """Produce every letter, retrying the failed ones; return the undelivered ones
        (index -> the last error)."""
        letters = [(record.value or b"", letter_headers(record, why)) for record, why in records]
        failed: dict[int, BaseException] = {}
        pending = list(range(len(letters)))
        deadline = self.clock() + self.timeout_s
        for attempt in range(self.attempts):
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            wait = remaining / (self.attempts - attempt)
            tries = (self._deliver(*letters[i], within_s=wait) for i in pending)
            outcomes = await asyncio.gather(*tries)
            retry = []
            for i, error in zip(pending, outcomes, strict=True):
                if error is None:
                    failed.pop(i, None)
                    continue
                failed[i] = error
                if is_retriable(error):
                    retry.append(i)
            pending = retry
            if not pending or attempt == self.attempts - 1:
                break
            log.info(
                "%d dead letters not delivered to %s (%s); trying again",
                len(pending),
                self.topic,
                describe(failed[pending[0]]),
            )
            await asyncio.sleep(min(self.backoff_s * 2**attempt, max(0.0, deadline - self.clock())))
        return failed

    async def _deliver(
        self, value: bytes, headers: Mapping[str, bytes], within_s: float
    ) -> BaseException | None:
        try:
            async with asyncio.timeout(within_s):
                delivery = await self.produce(value, headers)
                # on a timeout the delivery goes on: it must not be cancelled under the
                # producer, and it may still arrive (the letter is then in both places)
                await asyncio.shield(delivery)
        except TimeoutError:  # asyncio's, raised from the cancellation: a cause of no use
            return TimeoutError(f"not delivered within {within_s:.1f}s")
        except Exception as exc:
            return exc
        return None
