"""One batch of input records -> profile writes and dead letters.

This is the whole per-batch hot path, and it knows nothing about Faust: records come
in as `Record`s, profiles go out through a `ProfileStore`, and bad records through a
`DeadLetterSink`. The Faust agent is a thin adapter around it, and tests drive it
directly with the in-memory store.

Per batch: decode every record and extract its identities; read where they point
(one round trip) and load the profiles they name (one more); stitch (which profile
each event belongs to, which profiles merge: `attributes.stitching`); merge and apply
events in offset order; commit every changed profile once (coalesced) in one atomic,
conditional round trip, computing again the part of the batch that read something
another worker changed meanwhile (`streams.effects`); and only then report the batch
done, so the caller acks (commits) offsets after the effect is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import msgspec

from attributes.events import Event, InvalidEvent, decode_event, event_time_ms
from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.merge import merge_states
from attributes.policies import DEFAULT_POLICY, MergePolicy
from attributes.profile import (
    ProfileState,
    Retraction,
    add_identity,
    apply_event,
    decode_state,
    encode_state,
    expire_windows,
    reconcile,
    render_view,
)
from attributes.rules import RuleSet
from attributes.stitching import Identity, Stitcher
from streams.effects import Stitched, split
from streams.records import (
    BatchReport,
    DeadLetterSink,
    Identified,
    ListDeadLetters,
    Record,
)
from traitflow.store import Conflict, Expected, ProfileStore, ProfileWrite

__all__ = [
    "ENTITY",
    "BatchProcessor",
    "BatchReport",
    "DeadLetterSink",
    "ListDeadLetters",
    "Record",
    "encode_view",
]

log = logging.getLogger(__name__)

ENTITY = "user"

#: Views are JSON; msgspec (unlike orjson) also writes integers past 64 bits.
encode_view = msgspec.json.Encoder().encode


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
        identities: IdentityRules | None = None,
        sources: Mapping[str, str] | None = None,
        policy: MergePolicy = DEFAULT_POLICY,
        retractions: Mapping[str, Retraction] | None = None,
    ) -> None:
        self.rules = rules
        self.store = store
        self.dead_letters = dead_letters
        self.clock = clock
        self.identities = identities or IdentityRules(DEFAULT_USER)
        #: topic -> the source its events come from (a topic not listed: its own name)
        self.sources = dict(sources or {})
        #: the merge policy of the materialised views
        self.policy = policy
        #: source -> what its `delete` events remove (a source not listed: its fields)
        self.retractions = dict(retractions or {})
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
        """Decode, then compute and commit until every event's effect is committed
        (another worker may have written some of the batch's profiles or identities
        meanwhile: the events that read them are then computed again on top)."""
        self._read_clock()
        report = BatchReport(records=len(records))
        rejected: list[tuple[Record, str]] = []
        events: list[Identified] = []
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent("record has no value")
                event = decode_event(record.value)
            except InvalidEvent as exc:
                rejected.append((record, str(exc)))
                continue
            identities = self.identities.extract(event)
            if not identities:
                types = ", ".join(self.identities.types)
                rejected.append((record, f"event carries no {ENTITY} identity ({types})"))
                continue
            events.append(Identified(record, event, identities, self.identities.previous(event)))

        sent: set[int] = set()  # ids of the rejected records already dead-lettered
        while True:
            failed: list[tuple[Record, str]] = []
            stitched = await self._stitch(events, failed)
            if failed:
                # the events that broke are dead letters with no effect at all, not even
                # on identities: the batch is stitched again without them
                self._abandon(stitched.profiles)
                rejected += failed
                broken = {id(record) for record, _ in failed}
                events = [item for item in events if id(item.record) not in broken]
                continue
            letters = [(record, why) for record, why in rejected if id(record) not in sent]
            try:
                if letters:  # durable before the commit moves the watermarks past them
                    await self.dead_letters.send(letters)
                    sent.update(id(record) for record, _ in letters)
                events = await self._commit(stitched, report)
            except BaseException:
                self._abandon(stitched.profiles)
                raise
            if not events:
                break
        report.dead_lettered = len(rejected)
        for refusal in report.refusals:
            log.info("profile %s: %s %r: %s", refusal.profile, *refusal.identity, refusal.reason)
        for skip in report.skips:
            if skip.kind == "wrong_type":  # the others are routine: counted, not logged
                log.info(
                    "attribute %s skipped event %s: %s",
                    skip.attribute,
                    skip.message_id,
                    skip.reason,
                )
        return report

    async def _commit(self, stitched: Stitched, report: BatchReport) -> list[Identified]:
        """Commit a batch's effect and report it; return the events to compute again.

        When the commit finds that another worker changed something the batch read,
        the parts of the batch that read none of it are committed (`effects.split`),
        and the events of the others are returned, their states forgotten."""
        redo: list[Identified] = []
        while stitched.writes or stitched.removed:
            try:
                await self.store.commit(
                    ENTITY, stitched.writes, stitched.removed, stitched.expected
                )
            except Conflict as conflict:
                report.conflicts += 1
                log.debug("part of a batch computed again: %s", conflict)
                stitched, stale = split(stitched, conflict, self.identities.profile_id)
                # states were changed in place: a store that keeps them must forget them
                self._abandon(stale.profiles)
                redo += stale.events
                continue
            break
        stitched.report_to(report)
        return redo

    async def _stitch(
        self, events: list[Identified], rejected: list[tuple[Record, str]]
    ) -> Stitched:
        """Where the events belong (`attributes.stitching`), the merges they make, and
        the writes of every profile they change, with what the commit must find."""
        pointers, states, expected = await self._read(events)
        try:
            return await self._stitched(events, pointers, states, expected, rejected)
        except BaseException:
            self._abandon(list(states))  # states it changed must not stay in a cache
            raise

    async def _read(
        self, events: Sequence[Identified]
    ) -> tuple[dict[Identity, str], dict[str, ProfileState], Expected]:
        """Where the events' identities point, the profiles they name (and those a new
        identity's profile id may already name), and what the commit must find."""
        wanted = list(dict.fromkeys(i for item in events for i in (*item.ids, *item.previous)))
        pointers = await self.store.lookup(ENTITY, wanted)
        candidates = [
            self.identities.profile_id(*item.ids[0])
            for item in events
            if item.ids[0] not in pointers
        ]
        ids = list(dict.fromkeys([*pointers.values(), *candidates]))
        states = await self.store.load(ENTITY, ids)
        # Only pointers to no loaded profile need checking: one that points to a loaded
        # profile moves only when another commit merges that profile away, and that
        # commit changes the profile's version, which is checked.
        expected = Expected(
            {
                identity: pid
                for identity in wanted
                if (pid := pointers.get(identity)) is None or pid not in states
            },
            {pid: states[pid].version if pid in states else None for pid in ids},
        )
        for state in states.values():
            self._fit(state)
        return pointers, states, expected

    async def _stitched(
        self,
        events: list[Identified],
        pointers: dict[Identity, str],
        states: dict[str, ProfileState],
        expected: Expected,
        rejected: list[tuple[Record, str]],
    ) -> Stitched:
        stitched = Stitched(events, pointers, expected=expected, profiles=[*states])
        # A pointer to a profile that is gone (merged away by another worker between the
        # two reads) is left out: its identity looks new, and the commit, which expects
        # the pointer as read, finds it moved and has the batch computed again.
        pointers = {identity: pid for identity, pid in pointers.items() if pid in states}
        # a record some profile has applied (a redelivery) is not stitched again: the
        # graph has moved on since, and stitching it now could merge what it never did
        fresh: list[Identified] = []
        for item in events:
            owner = states.get(pointers.get(item.ids[0], ""))
            source = f"{item.record.topic}/{item.record.partition}"
            if owner is not None and owner.offsets.get(source, -1) >= item.record.offset:
                stitched.found(owner.id).duplicates += 1
            else:
                fresh.append(item)

        stitcher = Stitcher(self.identities, pointers, states)
        for item in fresh:
            at = event_time_ms(item.event, item.record.timestamp_ms)
            stitcher.assign(item.ids, item.previous, at)
        plan = stitcher.finish()
        for refusal in plan.refusals:
            stitched.found(refusal.profile).refusals.append(refusal)
        for pid in plan.created:
            states[pid] = ProfileState(id=pid, entity=ENTITY)
            expected.versions.setdefault(pid, None)
        merged: set[str] = set()
        for absorbed, survivor in plan.merges:
            stitched.found(absorbed).merges += 1
            merge_states(states[survivor], states[absorbed], self.rules)
            merged.add(survivor)
            self._renders.pop(survivor, None)  # its remembered values are not the merge's
        stitched.removed = [absorbed for absorbed, _ in plan.merges]  # loaded or created
        stitched.profiles += plan.created

        by_profile: dict[str, list[tuple[Record, Event]]] = {}
        for item, pid in zip(fresh, plan.profiles, strict=True):
            by_profile.setdefault(pid, []).append((item.record, item.event))
        for pid, items in by_profile.items():
            state = states[pid]
            links = list(dict.fromkeys(plan.links.get(pid, ())))
            if links:
                for kind, value in links:
                    add_identity(state, kind, value)
                state.identities = self.identities.in_priority_order(state.identities)
            changed = bool(links) or pid in merged
            # what the slow path starts again from; a merged state is nowhere else
            snapshot = encode_state(state) if pid in merged else None
            report = stitched.found(pid)
            mark = report.mark()
            try:
                write = self._apply(state, items, report, changed)
            except Exception:
                # A bug met by some input must not stall the partition (the batch would be
                # retried forever): find the events that break, dead-letter only those.
                log.exception("profile %s failed; applying its events one by one", pid)
                report.rollback(mark)
                self.store.abandon(ENTITY, [pid])
                base = await self._before(pid, snapshot, links)
                write = await self._apply_each(base, items, report, rejected, changed)
            if write is not None:
                write.identities = links
                stitched.writes.append(write)
        return stitched

    async def _before(
        self, pid: str, snapshot: bytes | None, links: Sequence[Identity]
    ) -> ProfileState:
        """A profile as it was before the batch's events: the snapshot of a merged
        one, else the stored state (or a new one) with the batch's links."""
        if snapshot is not None:
            return decode_state(snapshot)
        state = (await self.store.load(ENTITY, [pid])).get(pid)
        state = state or ProfileState(id=pid, entity=ENTITY)
        self._fit(state)
        for kind, value in links:
            add_identity(state, kind, value)
        return state

    def _abandon(self, profiles: Sequence[str]) -> None:
        self.store.abandon(ENTITY, profiles)
        for pid in profiles:
            self._renders.pop(pid, None)

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
            expected = Expected(versions={pid: state.version for pid, state in states.items()})
            for state in states.values():
                self._fit(state)
                writes.append(self._write(state, source, set()))
            try:
                await self.store.commit(ENTITY, writes, expected=expected)
            except Conflict:
                # another worker wrote one of them meanwhile (its write re-rendered it)
                self._abandon(due)
                return 0
            except BaseException:
                self._abandon(due)
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
        `touched`: the attributes changed since the state was loaded. A deleted
        profile has no view (reads answer 404) and nothing to expire."""
        now = self._now
        expiry: tuple[str, int | None] | None = None  # not indexed without windows
        if state.deleted:
            self._renders.pop(state.id, None)
            if self.rules.windowed:
                expiry = (source, None)
            return ProfileWrite(state, encode_state(state), None, expiry=expiry)
        if self.rules.windowed:
            expiry = (source, expire_windows(state, self.rules, now, touched))
        remembered = self._renders.pop(state.id, None)
        previous = remembered[1] if remembered is not None and remembered[0] is state else None
        rendered = render_view(state, self.rules, now, previous, touched, self.policy)
        self._renders[state.id] = (state, rendered["attributes"])
        if len(self._renders) > self._remembered_renders:
            self._renders.popitem(last=False)
        return ProfileWrite(state, encode_state(state), encode_view(rendered), expiry=expiry)

    def _apply(
        self,
        state: ProfileState,
        items: Sequence[tuple[Record, Event]],
        report: BatchReport,
        changed: bool = False,
    ) -> ProfileWrite | None:
        """Apply a profile's events of this batch; the write, or None if nothing
        changed (`changed`: the state was changed before, by a merge or a link)."""
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
                origin := self.sources.get(record.topic, record.topic),
                self.retractions.get(origin, "fields"),
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
        base: ProfileState,
        items: Sequence[tuple[Record, Event]],
        report: BatchReport,
        rejected: list[tuple[Record, str]],
        changed: bool,
    ) -> ProfileWrite | None:
        """The slow path: each event on a fresh copy of `base` (the state before the
        batch's events), keeping the copies that work."""
        state = base
        write = None
        for item in items:
            trial = decode_state(encode_state(state))
            mark = report.mark()
            try:
                outcome = self._apply(trial, [item], report, changed and write is None)
            except Exception as exc:
                report.rollback(mark)
                rejected.append((item[0], f"event could not be applied: {exc!r}"))
                continue
            if outcome is not None:
                state, write = trial, outcome
        return write
