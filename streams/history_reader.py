"""Reading attributes' history out of the ingest topics, for a backfill (`streams.
backfill`): where it lies in each input partition (`spans`: `streams.history`, from the
partition's horizon on), and the scratch states its events make, per profile (`read`).

Events are decoded as a live batch decodes them and applied by the worker's own
`apply_event`, in short slices (`SLICE_S`) each holding the processor's lock: the lock a
live batch holds from its first read to its commit. The lock is fair, so a live batch
that arrives waits for at most the slice in progress, and once it runs no backfill work
runs between its round trips to Redis. Reading is also bounded in rate
(`TRAITFLOW_BACKFILL_RATE_PER_S`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from attributes.events import InvalidEvent
from attributes.profile import ProfileState, apply_event
from attributes.recomputation import Horizons
from attributes.ruleset import RuleSet
from streams.entity import EntityProcessor
from streams.history import OPEN, Span, after_horizon, committed_before, history_end
from streams.processor import BatchProcessor
from streams.records import Identified, Record
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs
from traitflow.key_layout import KeyLayout
from traitflow.topics import ingest_partitions

T = TypeVar("T")
R = TypeVar("R")

#: how often progress is saved (seconds)
PROGRESS_S = 1.0
#: the longest the backfill computes in one hold of the processor's lock (seconds):
#: what a live batch that arrives meanwhile may wait (a fetch of events is applied in
#: slices, and an attribute's filter may take milliseconds per event)
SLICE_S = 0.002


class Progress(Protocol):
    """Records what a backfill has done, under `progress_id`."""

    def __call__(self, progress_id: str, **progress: object) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Target:
    """What one backfill computes: `rules` of one entity (their attributes, under the
    state keys the live workers compute them at), whose live computation began at rules
    `version`; its progress is recorded as `progress_id`'s."""

    entity: str
    version: int
    rules: RuleSet
    progress_id: str


class HistoryReader:
    """Reads history for one processor's backfills (`spans`, then `read`)."""

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        client: aioredis.Redis,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.client = client
        self.keys = KeyLayout(settings.key_prefix)
        self.progress = progress

    async def spans(
        self, target: Target, horizons: Horizons, started: int, *, whole: bool = False
    ) -> list[Span]:
        """Each ingest partition's history for `target`, once every end is known
        (`whole`: to the end of the log, `OPEN`), from its horizon on."""
        settings = self.settings
        # group_id: to read the workers' committed offsets (it never joins the group)
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=settings.app_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = ingest_partitions(consumer, settings)
            lows = await consumer.beginning_offsets(partitions)
            while True:
                highs = await consumer.end_offsets(partitions)
                spans, waiting = [], 0
                for tp in partitions:
                    name = f"{tp.topic}/{tp.partition}"
                    starts = await self.client.hgetall(self.keys.rules_starts(name))
                    end = history_end(starts, target.version)
                    also = committed_before(starts, target.version, target.entity)
                    if whole:
                        end, also = OPEN, frozenset()
                    elif end is None and highs[tp] > lows[tp]:
                        # what the workers have consumed: all of it older, if nothing
                        # is in flight. (Not the end the broker reports: Tansu reports
                        # the start of a partition's last record batch.)
                        committed = await consumer.committed(tp)
                        if committed is not None and committed >= highs[tp]:
                            end = committed
                    elif end is None:
                        end = highs[tp]  # empty
                    if end is None:
                        waiting += 1
                        continue
                    span = Span(tp, lows[tp], max(lows[tp], end), also)
                    if tp.topic in horizons:
                        span = after_horizon(span, starts, horizons[tp.topic], target.entity)
                    spans.append(span)
                if not waiting:
                    return spans
                await self.progress(
                    target.progress_id, phase="waiting", done=0, total=0, started_ms=started
                )
                await asyncio.sleep(PROGRESS_S)
        finally:
            await consumer.stop()

    async def read(
        self, target: Target, spans: list[Span], started: int
    ) -> dict[str, ProfileState]:
        """Scratch states of the target's attributes, per profile, over the spans' events."""
        entity = self.processor.entities[target.entity]
        wanted = {s.partition: s for s in spans if s.stop > s.low}
        total = sum(s.stop - s.low for s in wanted.values())
        histories: dict[str, ProfileState] = {}
        seen: set[tuple[str, str]] = set()
        done = 0
        if not wanted:
            return histories
        consumer = AIOKafkaConsumer(**client_kwargs(self.settings), enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(list(wanted))
            for tp, span in wanted.items():
                consumer.seek(tp, span.low)
            rate = self.settings.backfill_rate_per_s
            saved = time.monotonic()
            while wanted:
                began = time.monotonic()
                fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
                records = []
                for tp, batch in fetched.items():
                    reading = wanted.get(tp)
                    if reading is None:
                        continue
                    records += [r for r in batch if reading.wants(r.offset)]
                    if batch and batch[-1].offset >= reading.stop - 1:
                        del wanted[tp]
                        consumer.pause(tp)
                if not fetched and all(s.end == OPEN for s in wanted.values()):
                    break  # read to the end of the log
                await self.apply(entity, target.rules, records, histories, seen)
                done += len(records)
                if time.monotonic() - saved >= PROGRESS_S:
                    saved = time.monotonic()
                    await self.progress(
                        target.progress_id,
                        phase="reading",
                        done=done,
                        total=total,
                        started_ms=started,
                    )
                await asyncio.sleep(max(0.0, len(records) / rate - (time.monotonic() - began)))
        finally:
            await consumer.stop()
        return histories

    async def apply(
        self,
        entity: EntityProcessor,
        rules: RuleSet,
        records: list,  # type: ignore[type-arg]  # aiokafka's ConsumerRecord
        histories: dict[str, ProfileState],
        seen: set[tuple[str, str]],
    ) -> None:
        """Apply each record's event to the scratch state of the profile it is for now,
        a slice at a time under the processor's lock (live batches first)."""
        now = int(time.time() * 1000)
        admitted: list[Identified] = []
        for chunk in await self.sliced(records, lambda r: self._admit(entity, r, now)):
            admitted += chunk
        identities = list(dict.fromkeys(i for item in admitted for i in item.ids))
        pointers = await entity.store.lookup(entity.entity, identities) if identities else {}

        def add(item: Identified) -> None:
            pid = next((pointers[i] for i in item.ids if i in pointers), None)
            if pid is None:
                return  # its profile is gone (erased, or an idle anonymous one expired)
            record, event = item.record, item.event
            where = entity.sources.get(record.topic, record.topic)
            if event.messageId:
                if (where, event.messageId) in seen:
                    return  # a producer's retry: live dedupe counted it once
                seen.add((where, event.messageId))
            state = histories.setdefault(pid, ProfileState(id=pid, entity=entity.entity))
            apply_event(
                state,
                event,
                ts=item.at,
                rules=rules,
                source=record.source,
                offset=record.offset,
                now=record.timestamp_ms,
                origin=where,
                retraction=entity.retractions.get(where, "fields"),
                traits_from=entity.identities.spec.traits_from,
            )

        await self.sliced(admitted, add)

    def _admit(self, entity: EntityProcessor, record: Any, now: int) -> list[Identified]:
        """A record's event for its `entity` profile, decoded as a live batch decodes it
        (`BatchProcessor.claims`): [] when it carries no identity of `entity`, or is not
        an event (a dead letter when it was live: nothing counted it)."""
        read = Record(record.topic, record.partition, record.offset, record.value, record.timestamp)
        try:
            claimed = self.processor.claims(read, now)
        except InvalidEvent:
            return []
        return [item for name, item in claimed if name == entity.entity]

    async def sliced(self, items: Sequence[T], work: Callable[[T], R]) -> list[R]:
        """`work` on each item in order, in slices of at most `SLICE_S` each holding the
        processor's lock: a live batch waits for one slice at most, and the backfill
        computes nothing while a live batch is between its round trips."""
        results: list[R] = []
        at = 0
        while at < len(items):
            async with self.processor.lock:
                began = time.monotonic()
                while True:  # one item at least, then as many as fit in the slice
                    results.append(work(items[at]))
                    at += 1
                    if at == len(items) or time.monotonic() - began >= SLICE_S:
                        break
            # a free lock is taken without a turn of the loop: without this one, the
            # backfill would go on to its next slice before a live batch could ask
            await asyncio.sleep(0)
        return results
