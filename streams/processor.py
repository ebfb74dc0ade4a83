"""One batch of input records -> profile writes and dead letters.

This is the whole per-batch hot path, and it knows nothing about Faust: records come
in as `Record`s, profiles go out through a `ProfileStore`, and bad records through a
`DeadLetterSink`. The Faust agent is a thin adapter around it, and tests drive it
directly with the in-memory store.

Per batch: decode every record, group events by profile, load all touched profiles
in one round trip, apply events in offset order, write every changed profile once
(coalesced) in one atomic round trip, and only then report the batch done, so the
caller acks (commits) offsets after the effect is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from attributes.events import Event, InvalidEvent, decode_event, event_time_ms
from attributes.profile import (
    ProfileState,
    Skip,
    apply_event,
    decode_state,
    encode_state,
    event_identities,
    expire_windows,
    reconcile,
    render_view,
)
from attributes.rules import RuleSet
from traitflow.store import ProfileStore, ProfileWrite

log = logging.getLogger(__name__)

ENTITY = "user"

#: Views are JSON; msgspec (unlike orjson) also writes integers past 64 bits.
encode_view = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, transport-neutral."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int


class DeadLetterSink(ABC):
    """Where records that cannot be processed go, with the reason; nothing is dropped."""

    @abstractmethod
    async def send(self, records: Sequence[tuple[Record, str]]) -> None:
        """Deliver every (record, reason); return only once they are durable."""


class ListDeadLetters(DeadLetterSink):
    """Keeps dead letters in memory (tests and the in-process processor)."""

    def __init__(self) -> None:
        self.records: list[tuple[Record, str]] = []

    async def send(self, records: Sequence[tuple[Record, str]]) -> None:
        self.records.extend(records)


@dataclass(slots=True)
class BatchReport:
    records: int = 0
    profiles_written: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    skips: list[Skip] = field(default_factory=list)

    def mark(self) -> tuple[int, int]:
        return self.duplicates, len(self.skips)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget the per-event findings since `mark`: that attempt failed and is redone."""
        self.duplicates, skips = mark
        del self.skips[skips:]


def profile_id(event: Event) -> str:
    """The profile an event belongs to: its userId, else its anonymousId.

    (Identity stitching, which links the two, replaces this rule.)"""
    pid = event.user_id or event.anonymous_id
    assert pid is not None  # decode_event guarantees one of them
    return pid


class BatchProcessor:
    """Applies batches of records, and re-renders profiles whose windows moved.

    `clock` gives the processing time (epoch seconds) that windows are evaluated at;
    it is read once per batch. Both entry points hold `lock`, so a timer's expiry
    round and a batch never work on the same profiles at once."""

    def __init__(
        self,
        rules: RuleSet,
        store: ProfileStore,
        dead_letters: DeadLetterSink,
        clock: Callable[[], float] = time.time,
        remembered_renders: int = 100_000,
    ) -> None:
        self.rules = rules
        self.store = store
        self.dead_letters = dead_letters
        self.clock = clock
        self.lock = asyncio.Lock()
        self._now = 0
        #: profile -> (the state object, its attribute values when last rendered): a
        #: store that keeps states (CachedProfileStore) hands back the same object, and
        #: then only the attributes an event touched are computed again
        self._renders: OrderedDict[str, tuple[ProfileState, dict[str, Any]]] = OrderedDict()
        self._remembered_renders = remembered_renders

    def forget_renders(self) -> None:
        """Drop the remembered renders (their states are gone from the store's cache)."""
        self._renders.clear()

    def _read_clock(self) -> int:
        self._now = int(self.clock() * 1000)
        return self._now

    async def process(self, records: Sequence[Record]) -> BatchReport:
        async with self.lock:
            return await self._process(records)

    async def _process(self, records: Sequence[Record]) -> BatchReport:
        self._read_clock()
        report = BatchReport(records=len(records))
        rejected: list[tuple[Record, str]] = []
        by_profile: dict[str, list[tuple[Record, Event]]] = {}
        #: identity -> the profile of its latest event in this batch (where its index points)
        owners: dict[tuple[str, str], str] = {}
        #: profile -> the identities its events in this batch carry, in order
        carried: dict[str, dict[tuple[str, str], None]] = {}
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent("record has no value")
                event = decode_event(record.value)
            except InvalidEvent as exc:
                rejected.append((record, str(exc)))
                continue
            pid = profile_id(event)
            by_profile.setdefault(pid, []).append((record, event))
            identities = carried.setdefault(pid, {})
            for identity in event_identities(event):
                owners[identity] = pid
                identities[identity] = None

        states = await self.store.load(ENTITY, list(by_profile))
        writes: list[ProfileWrite] = []
        for pid, items in by_profile.items():
            state = states.get(pid) or ProfileState(id=pid, entity=ENTITY)
            self._fit(state)
            mark = report.mark()
            try:
                write = self._apply(state, items, report)
            except Exception:
                # A bug met by some input must not stall the partition (the batch would be
                # retried forever): find the events that break, dead-letter only those.
                log.exception("profile %s failed; applying its events one by one", pid)
                report.rollback(mark)
                self.store.abandon(ENTITY, [pid])
                write = await self._apply_each(pid, items, report, rejected)
            if write is not None:
                applied = write.state.identities
                write.identities = [
                    (kind, value)
                    for kind, value in carried[pid]
                    if owners[(kind, value)] == pid and value in applied.get(kind, ())
                ]
                writes.append(write)

        try:
            if rejected:
                await self.dead_letters.send(rejected)
            await self.store.save(ENTITY, writes)
        except BaseException:
            # states were changed in place; a store that keeps them must forget them,
            # or the retried batch would look applied and never be written
            self.store.abandon(ENTITY, list(by_profile))
            raise
        report.dead_lettered = len(rejected)
        report.profiles_written = len(writes)
        for skip in report.skips:
            if skip.kind == "wrong_type":  # the others are routine: counted, not logged
                log.info(
                    "attribute %s skipped event %s: %s",
                    skip.attribute,
                    skip.message_id,
                    skip.reason,
                )
        return report

    async def expire(self, source: str, limit: int, owned: Container[str] | None = None) -> int:
        """Re-render the profiles indexed under `source` whose windows have moved by
        now; return how many were written. The cost is that of the due profiles only.

        With `owned`, the worker's live set of owned partitions, nothing is done unless
        `source` is still in it once the lock is held: a partition revoked while the
        expiry round waited has a new owner, the profiles' only writer."""
        async with self.lock:
            if owned is not None and source not in owned:
                return 0
            now = self._read_clock()
            due = await self.store.due(ENTITY, source, now, limit)
            if not due:
                return 0
            states = await self.store.load(ENTITY, due)
            if gone := [pid for pid in due if pid not in states]:
                await self.store.unschedule(ENTITY, source, gone)  # indexed, then deleted
            writes = []
            for state in states.values():
                self._fit(state)
                writes.append(self._write(state, source, set()))
            try:
                await self.store.save(ENTITY, writes)
            except BaseException:
                self.store.abandon(ENTITY, due)
                raise
            return len(writes)

    def _fit(self, state: ProfileState) -> None:
        """Make a loaded state fit the rules (`reconcile`), unless this processor wrote
        it last: then it fits already, and the check is skipped."""
        remembered = self._renders.get(state.id)
        if remembered is not None and remembered[0] is state:
            return
        if reset := reconcile(state, self.rules):
            log.info("profile %s: states of changed rules reset: %s", state.id, ", ".join(reset))

    def _write(self, state: ProfileState, source: str, touched: set[str]) -> ProfileWrite:
        """The write of a changed state: its view as of now, and when to look again.
        `touched`: the attributes changed since the state was loaded."""
        now = self._now
        expiry = None  # not indexed at all when the rules have no windows
        if self.rules.windowed:
            expiry = (source, expire_windows(state, self.rules, now, touched))
        remembered = self._renders.pop(state.id, None)
        previous = remembered[1] if remembered is not None and remembered[0] is state else None
        rendered = render_view(state, self.rules, now, previous, touched)
        self._renders[state.id] = (state, rendered["attributes"])
        if len(self._renders) > self._remembered_renders:
            self._renders.popitem(last=False)
        return ProfileWrite(state, encode_state(state), encode_view(rendered), expiry=expiry)

    def _apply(
        self, state: ProfileState, items: Sequence[tuple[Record, Event]], report: BatchReport
    ) -> ProfileWrite | None:
        """Apply a profile's events of this batch; the write, or None if nothing changed."""
        changed = False
        source = ""
        touched: set[str] = set()
        for record, event in items:
            source = f"{record.topic}/{record.partition}"
            applied = apply_event(
                state,
                event,
                event_time_ms(event, record.timestamp_ms),
                self.rules,
                source,
                record.offset,
                self._now,
            )
            changed |= applied.changed
            report.duplicates += not applied.changed
            report.skips.extend(applied.skips)
            touched.update(applied.touched)
        if not changed:
            return None
        return self._write(state, source, touched)

    async def _apply_each(
        self,
        pid: str,
        items: Sequence[tuple[Record, Event]],
        report: BatchReport,
        rejected: list[tuple[Record, str]],
    ) -> ProfileWrite | None:
        """The slow path: each event on a fresh copy, keeping the copies that work."""
        stored = (await self.store.load(ENTITY, [pid])).get(pid)
        state = stored or ProfileState(id=pid, entity=ENTITY)
        self._fit(state)
        write = None
        for item in items:
            trial = decode_state(encode_state(state))
            mark = report.mark()
            try:
                outcome = self._apply(trial, [item], report)
            except Exception as exc:
                report.rollback(mark)
                rejected.append((item[0], f"event could not be applied: {exc!r}"))
                continue
            if outcome is not None:
                state, write = trial, outcome
        return write
