"""Dead letters read back and re-published: what `traitflow dead-letters` runs.

A replay publishes each chosen letter's original bytes to the topic it came from
(keyed as `traitflow produce` keys events), typically after a rule or limit change
made them valid; an event that is still bad is simply dead-lettered again.

Never twice. Which of the dead-letter topic's letters were replayed is kept in Redis
per dead-letter partition (`ReplayLedger`: everything below a mark, plus the offsets
above it replayed while a filter left earlier ones out), so a second replay does not
publish them again, and a later replay without the filter still finds the ones left
out. A parked letter is removed once it is re-published. Within one replay, letters
with the same origin (a retried batch dead-letters its records again) are published
once. A crash between a publish and its bookkeeping publishes those letters again
next time: at least once, like the rest of the pipeline. One replay runs at a time
(a lock in Redis).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from attributes.errors import InputError, TraitflowError
from streams.dead_letters import Letter, RedisParking, letter_from_record
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import async_client
from traitflow.topics import publish_records, read_topic

#: header a replayed record carries: the dead letter it was ("3:17", or a parked id)
REPLAY_OF = "traitflow.replay.of"

#: letters published, then recorded in Redis, per round
CHUNK = 100

#: how long the replay lock outlives a replay that died (it is extended every chunk)
LOCK_MS = 120_000


class ReplayError(TraitflowError):
    """A replay cannot run now (another one holds the lock)."""


class InvalidSince(InputError):
    """`--since` is neither a duration nor a time."""


@dataclass(slots=True)
class ReplayLedger:
    """Which letters of one dead-letter partition were replayed: every offset below
    `next`, and those in `done` (all at or above it)."""

    next: int = 0
    done: set[int] = field(default_factory=set)

    def replayed(self, offset: int) -> bool:
        return offset < self.next or offset in self.done

    def record(self, offset: int) -> None:
        if offset >= self.next:
            self.done.add(offset)
            self._advance()

    def forget_before(self, first: int) -> None:
        """The topic starts at `first` now (retention deleted what was before)."""
        if first > self.next:
            self.done = {offset for offset in self.done if offset >= first}
            self.next = first
            self._advance()

    def _advance(self) -> None:
        while self.next in self.done:
            self.done.remove(self.next)
            self.next += 1

    def encode(self) -> bytes:
        return orjson.dumps({"next": self.next, "done": sorted(self.done)})

    @classmethod
    def decode(cls, raw: bytes | None) -> ReplayLedger:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(int(data["next"]), {int(offset) for offset in data["done"]})


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now_s: float) -> int:
    """`--since`: a duration back from now (`90s`, `30m`, `2h`, `7d`, `1w`) or an ISO
    8601 time (UTC unless it says otherwise); epoch milliseconds."""
    problem = f"--since {text!r}: give a duration (30m, 2h, 7d) or a time (2026-11-04T09:00)"
    duration = _DURATION.fullmatch(text.strip())
    if duration:
        since_s = now_s - float(duration[1]) * _SECONDS[duration[2]]
        if not math.isfinite(since_s):  # more digits than a float holds
            raise InvalidSince(problem)
        return int(since_s * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidSince(problem) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Letters dead-lettered (or parked) at or after `since_ms`, whose reason contains
    `reason` (any case)."""

    since_ms: int | None = None
    reason: str | None = None

    def matches(self, letter: Letter) -> bool:
        if self.since_ms is not None and letter.time_ms < self.since_ms:
            return False
        return self.reason is None or self.reason.casefold() in letter.reason.casefold()


@dataclass(slots=True)
class ReplayPlan:
    publish: list[Letter] = field(default_factory=list)
    #: same origin as a letter published: recorded (or removed) with it, not published
    duplicates: list[Letter] = field(default_factory=list)
    #: their origin is no ingest topic now: left as they are
    unroutable: list[Letter] = field(default_factory=list)

    def total(self) -> int:
        return len(self.publish) + len(self.duplicates)


def ledger_field(dead_letter_topic: str, partition: int) -> str:
    return f"{dead_letter_topic}/{partition}"


def plan_replay(
    letters: Sequence[Letter],
    ledgers: Mapping[int, ReplayLedger],
    letter_filter: LetterFilter,
    ingest_topics: Collection[str],
) -> ReplayPlan:
    """What a replay publishes: the letters (topic ones, then parked ones) that match
    the filter and were not replayed yet, one per origin."""
    plan = ReplayPlan()
    published: set[str] = set()
    for letter in letters:
        if not letter.parked:
            partition, offset = topic_position(letter)
            ledger = ledgers.get(partition)
            if ledger is not None and ledger.replayed(offset):
                continue
        if not letter_filter.matches(letter):
            continue
        if letter.topic not in ingest_topics:
            plan.unroutable.append(letter)
        elif letter.origin in published:
            plan.duplicates.append(letter)
        else:
            published.add(letter.origin)
            plan.publish.append(letter)
    return plan


def topic_position(letter: Letter) -> tuple[int, int]:
    """(partition, offset) of a topic letter on the dead-letter topic."""
    partition, _, offset = letter.id.partition(":")
    return int(partition), int(offset)


@dataclass(slots=True)
class Letters:
    """What `load` read: the topic's letters, the parked ones and the ledgers."""

    topic: list[Letter] = field(default_factory=list)
    parked: list[Letter] = field(default_factory=list)
    ledgers: dict[int, ReplayLedger] = field(default_factory=dict)

    def all(self) -> list[Letter]:
        return [*self.topic, *self.parked]


class DeadLetters:
    """The dead-letter topic and the parked letters of `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyLayout(settings.key_prefix)
        self.client = async_client(settings, decode_responses=False)
        self.parking = RedisParking(self.client, settings.key_prefix)

    async def close(self) -> None:
        await self.client.aclose()

    async def load(self, *, topic: bool = True, parked: bool = True) -> Letters:
        found = Letters()
        if parked:
            found.parked = await self.parking.all()
        if topic:
            records = await read_topic(self.settings, self.settings.dead_letter_topic)
            found.topic = [
                letter_from_record(r.partition, r.offset, r.timestamp, r.value, r.headers)
                for r in records
            ]
            found.ledgers = await self.ledgers()
            firsts: dict[int, int] = {}
            for record in records:
                firsts.setdefault(record.partition, record.offset)
            for partition, first in firsts.items():
                found.ledgers.setdefault(partition, ReplayLedger()).forget_before(first)
        return found

    async def ledgers(self) -> dict[int, ReplayLedger]:
        raw = await self.client.hgetall(self.keys.replayed_letters)
        prefix = f"{self.settings.dead_letter_topic}/"
        ledgers = {}
        for name, value in raw.items():
            text = name.decode() if isinstance(name, bytes) else name
            if text.startswith(prefix) and text[len(prefix) :].isdigit():
                encoded = value.encode() if isinstance(value, str) else value
                ledgers[int(text[len(prefix) :])] = ReplayLedger.decode(encoded)
        return ledgers

    async def replay(
        self,
        plan: ReplayPlan,
        ledgers: dict[int, ReplayLedger],
        on_progress: Callable[[int], None] = lambda done: None,
    ) -> None:
        """Publish the plan chunk by chunk; after each chunk, record the topic letters
        (and their duplicates) as replayed and remove the parked ones."""
        token = uuid.uuid4().hex
        lock = self.keys.replay_lock
        if not await self.client.set(lock, token, nx=True, px=LOCK_MS):
            raise ReplayError(
                "another replay is in progress (or died less than "
                f"{LOCK_MS // 1000}s ago; key {lock})"
            )
        try:
            for chunk, extra in _chunks(plan):
                await self.client.pexpire(lock, LOCK_MS)
                biggest = max(len(letter.value) for letter in chunk)
                await publish_records(
                    self.settings,
                    [(x.topic, x.value, {REPLAY_OF: x.id.encode()}) for x in chunk],
                    max_request_size=max(1024 * 1024, biggest + 64 * 1024),
                )
                await self._done([*chunk, *extra], ledgers)
                on_progress(len(chunk) + len(extra))
        finally:
            if await self.client.get(lock) == token.encode():
                await self.client.delete(lock)

    async def _done(self, letters: Sequence[Letter], ledgers: dict[int, ReplayLedger]) -> None:
        touched = set()
        for letter in letters:
            if not letter.parked:
                partition, offset = topic_position(letter)
                ledgers.setdefault(partition, ReplayLedger()).record(offset)
                touched.add(partition)
        if touched:
            topic = self.settings.dead_letter_topic
            await self.client.hset(
                self.keys.replayed_letters,
                mapping={ledger_field(topic, p): ledgers[p].encode() for p in sorted(touched)},
            )
        await self.parking.remove([letter for letter in letters if letter.parked])


def _chunks(plan: ReplayPlan) -> Iterator[tuple[list[Letter], list[Letter]]]:
    """The letters to publish, CHUNK at a time, each chunk with the duplicates of its
    letters (done along with them)."""
    twins: dict[str, list[Letter]] = {}
    for letter in plan.duplicates:
        twins.setdefault(letter.origin, []).append(letter)
    for start in range(0, len(plan.publish), CHUNK):
        chunk = plan.publish[start : start + CHUNK]
        yield chunk, [twin for letter in chunk for twin in twins.get(letter.origin, [])]
