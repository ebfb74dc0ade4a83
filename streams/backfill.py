"""Backfill: an attribute made or changed through the API is computed over the history
still retained in the ingest topics, then joined with what the workers computed live
since they switched to it, with no event counted twice.

Where the live computation began is a fact per input partition: before its first
commit at a rules version, a worker notes each partition's first offset in the batch
(`tf:rs:{partition}`, `BatchProcessor._note_starts`). Every event below it was
committed under older rules (without the attribute), every one from it on under rules
at least that new (with it), but for what a batch that switched versions midway had
committed at the older one, noted with the start. So the backfill reads each
partition from its earliest retained offset up to there, and those (`streams.history`).
A partition that no batch has reached at that version is
read to its end, once the workers' consumer group has committed that end (nothing of
it is in flight). Each event is applied, by the worker's own `apply_event` with the
attribute alone, to a scratch state of the profile its identities point to now; each
scratch state is then merged into the live one as stitching merges two profiles
(`attributes.catalog.join_history`), and the attribute becomes ACTIVE.

One process runs backfills at a time (a lease in Redis: `BackfillRunner`): the backfill
process (`streams.backfill_process`), which computes no live batches, or, with
TRAITFLOW_BACKFILL_PROCESS off, a worker, in the same process and event loop as the
live batches. There live batches come first: the backfill computes in short slices
(`SLICE_S`) holding the processor's lock, the lock a live batch holds from its first
read to its commit. The lock is fair, so a live batch that
arrives waits for at most the slice in progress, and once it runs no backfill work
runs between its round trips to Redis (without the lock it did: each of a batch's
awaits let the backfill compute, and a batch waited for several of its turns). The
backfill also reads at a bounded rate (`TRAITFLOW_BACKFILL_RATE_PER_S`) and joins a
few profiles at a time under the same lock.

Limits: the history is held in memory, one scratch state per profile, until joined;
a producer's retry of one event on both sides of the start is counted twice; a
backfill whose worker dies starts again from the beginning once its lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from attributes.aggregators import DERIVED
from attributes.catalog import ManagedAttribute, Status, compiled, join_history, origin
from attributes.events import InvalidEvent
from attributes.profile import ProfileState, apply_event, render_view
from attributes.rules import parse_rules
from attributes.ruleset import CompiledAttribute, RuleSet
from streams.entity import EntityProcessor
from streams.history import OPEN, Span, committed_before, history_end
from streams.processor import BatchProcessor
from streams.records import Identified, Record
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs
from traitflow.key_layout import KeyLayout
from traitflow.rule_catalog import RuleCatalog
from traitflow.store import Conflict, Expected, RulesChanged

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: profiles joined per hold of the processor's lock
JOIN_CHUNK = 100
#: how often progress is saved, and the lease renewed (seconds)
PROGRESS_S = 1.0
#: the longest the backfill computes in one hold of the processor's lock (seconds):
#: what a live batch that arrives meanwhile may wait (a fetch of events is applied in
#: slices, and an attribute's filter may take milliseconds per event)
SLICE_S = 0.002


@dataclass(frozen=True, slots=True)
class Preview:
    """A profile's value of an attribute as served now, and after a backfill."""

    profile: str
    before: object
    after: object


class Backfill:
    """Computes one attribute over the retained history and joins it (`run`)."""

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        catalog: RuleCatalog,
        client: aioredis.Redis,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.catalog = catalog
        self.client = client
        self.keys = KeyLayout(settings.key_prefix)
        #: whether progress is saved (a dry run saves none)
        self.recording = True

    async def run(self, attribute: ManagedAttribute) -> bool:
        """Backfill `attribute` (PROCESSING, at its version); whether it is done (False:
        it changed or left the rules meanwhile, and its new definition is next)."""
        if attribute.definition.get("function") == DERIVED:
            # computed from the others at each render: no state, no history. (Compiled
            # alone it would not compile: what it reads is not there.)
            return True
        started = int(time.time() * 1000)
        rules = self._alone(attribute)
        targets = rules.attributes
        if not targets:
            return True
        spans = await self._spans(attribute, started)
        histories = await self._read(attribute, rules, spans, started)
        return await self._join(attribute, targets, histories, started)

    async def preview(self, attribute: ManagedAttribute, sample: int) -> list[Preview]:
        """What a backfill would make of `attribute` for up to `sample` profiles, with
        nothing written: each one's served value now, and after. For a PROCESSING
        attribute, after is the history joined with the live value; for any other, the
        attribute over the whole retained topic (a DRAFT's values to be; an ACTIVE
        one's recomputation, which should equal what is served)."""
        self.recording = False
        rules = self._alone(attribute)
        whole = attribute.status is not Status.PROCESSING
        spans = await self._spans(attribute, 0, whole=whole)
        histories = await self._read(attribute, rules, spans, 0)
        chosen = sorted(histories)[:sample]
        store = self.processor.entities[attribute.entity].store
        stored = await store.load(attribute.entity, chosen)
        views = await store.read_views(attribute.entity, [("id", pid) for pid in chosen])
        now = int(time.time() * 1000)
        found = []
        for pid, raw in zip(chosen, views, strict=True):
            before = orjson.loads(raw)["attributes"].get(attribute.name) if raw else None
            state = stored.get(pid, ProfileState(id=pid, entity=attribute.entity))
            if whole:
                state = ProfileState(id=pid, entity=attribute.entity)
            join_history(state, histories[pid], rules.attributes)
            after = render_view(state, rules, now)["attributes"].get(attribute.name)
            found.append(Preview(pid, before, after))
        return found

    def _alone(self, attribute: ManagedAttribute) -> RuleSet:
        """`attribute` compiled alone, as the workers compile it (same state key)."""
        return parse_rules(
            "attributes: []\n", "backfill", list(self.settings.entities),
            [(origin(attribute.id), compiled(attribute))],
        )  # fmt: skip

    async def _progress(self, attribute: ManagedAttribute, **progress: object) -> None:
        if self.recording:
            await self.catalog.set_progress(attribute.id, progress)

    async def _spans(
        self, attribute: ManagedAttribute, started: int, *, whole: bool = False
    ) -> list[Span]:
        """Each ingest partition's history for `attribute`, once every end is known
        (`whole`: to the end of the log, `OPEN`)."""
        settings = self.settings
        # group_id: to read the workers' committed offsets (it never joins the group)
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=settings.app_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in settings.sources
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            lows = await consumer.beginning_offsets(partitions)
            while True:
                highs = await consumer.end_offsets(partitions)
                spans, waiting = [], 0
                for tp in partitions:
                    noted = self.keys.rules_starts(f"{tp.topic}/{tp.partition}")
                    starts = {} if whole else await self.client.hgetall(noted)
                    end = history_end(starts, attribute.version)
                    also = committed_before(starts, attribute.version, attribute.entity)
                    if whole:
                        end = OPEN
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
                    spans.append(Span(tp, lows[tp], max(lows[tp], end), also))
                if not waiting:
                    return spans
                await self._progress(
                    attribute, phase="waiting", done=0, total=0, started_ms=started
                )
                await asyncio.sleep(PROGRESS_S)
        finally:
            await consumer.stop()

    async def _read(
        self, attribute: ManagedAttribute, rules: RuleSet, spans: list[Span], started: int
    ) -> dict[str, ProfileState]:
        """Scratch states of the attribute, per profile, over the spans' events."""
        entity = self.processor.entities[attribute.entity]
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
                await self._apply(entity, rules, records, histories, seen)
                done += len(records)
                if time.monotonic() - saved >= PROGRESS_S:
                    saved = time.monotonic()
                    await self._progress(
                        attribute, phase="reading", done=done, total=total, started_ms=started
                    )
                await asyncio.sleep(max(0.0, len(records) / rate - (time.monotonic() - began)))
        finally:
            await consumer.stop()
        return histories

    async def _apply(
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
        for chunk in await self._sliced(records, lambda r: self._admit(entity, r, now)):
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

        await self._sliced(admitted, add)

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

    async def _sliced(self, items: Sequence[T], work: Callable[[T], R]) -> list[R]:
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

    async def _join(
        self,
        attribute: ManagedAttribute,
        targets: tuple[CompiledAttribute, ...],
        histories: dict[str, ProfileState],
        started: int,
    ) -> bool:
        """Fold the scratch states into the stored profiles, a chunk at a time; False if
        the attribute left the rules the worker computes meanwhile."""
        pids = list(histories)
        for at in range(0, len(pids), JOIN_CHUNK):
            chunk = {pid: histories[pid] for pid in pids[at : at + JOIN_CHUNK]}
            while True:
                try:
                    async with self.processor.lock:
                        entity = self.processor.entities[attribute.entity]
                        live = {a.key for a in entity.rules.attributes}
                        if not all(t.key in live for t in targets):
                            return False
                        await fold(entity, chunk, targets, int(self.processor.clock() * 1000))
                    break
                except Conflict:
                    continue  # a live batch wrote one of them meanwhile: again, on top
                except RulesChanged:
                    await self.processor.switch_to_current()
            await self._progress(
                attribute, phase="joining", done=min(len(pids), at + JOIN_CHUNK),
                total=len(pids), started_ms=started,
            )  # fmt: skip
        return True


async def fold(
    entity: EntityProcessor,
    histories: Mapping[str, ProfileState],
    targets: tuple[CompiledAttribute, ...],
    now: int,
) -> int:
    """Merge `histories` into the stored profiles of `entity` and write them, in one
    commit at the processor's rules version; how many were written. Conflict if one
    changed since it was loaded (nothing is written)."""
    entity.now = now
    names = {t.name for t in targets}
    async with entity.checkout() as work:
        states = await work.load(list(histories))
        loaded = {pid: state.version for pid, state in states.items()}
        writes = []
        for pid, state in states.items():
            entity.views.fit(state)
            if not join_history(state, histories[pid], targets):
                continue
            state.version += 1
            source = next(iter(state.offsets), "").split("@")[0]  # its owner expires it
            write = entity.views.write(state, source, touched=set(names), now=now)
            entity.rerendered(write)
            writes.append(write)
        if writes:
            if entity.announcer.announces:
                entity.announcer.announce(writes, (), now)
            versions: dict[str, int | None] = {w.state.id: loaded[w.state.id] for w in writes}
            await work.commit(writes, expected=Expected(versions=versions))
    return len(writes)
