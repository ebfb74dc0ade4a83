"""One entity's share of a batch: stitch, apply, render, commit (`EntityProcessor`).

`streams.processor.BatchProcessor` decodes a batch once and hands each entity the
events that carry its identities; this is the whole per-entity hot path. Per entity
and batch: read where the events' identities point (one round trip) and load the
profiles they name (one more); stitch (which profile each event belongs to, which
profiles merge: `attributes.stitching`); merge and apply events in offset order;
commit every changed profile once (coalesced) in one atomic, conditional round trip,
computing again the part of the batch that read something another worker changed
meanwhile (`streams.effects`). Applying a profile's events is in `streams.applying`;
a profile's idle lifetime, and the writes time makes without events (expiry rounds),
in `streams.lifetimes` (both parts of `EntityProcessor`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from attributes.clock import DEFAULT_REFRESH_MS
from attributes.erasure import Tombstone
from attributes.errors import TraitflowError
from attributes.identities import IdentityRules
from attributes.merge import merge_states
from attributes.policies import MergePolicy
from attributes.profile import (
    ProfileState,
    Retraction,
    add_identity,
    applied_before,
    encode_state,
)
from attributes.records import RecordMapping
from attributes.ruleset import RuleSet
from attributes.stitching import TRUST_NONE, Identity, SourceTrust, Stitcher, Trust, anchored
from streams.announcements import Announcer
from streams.applying import ProfileApplier
from streams.effects import Stitched, committed_events, split
from streams.erasures import (
    decoded,
    erase,
    erase_job,
    erase_request,
    erased_event,
    profile_identities,
)
from streams.lifetimes import Lifetimes
from streams.records import BatchReport, Identified, Record
from streams.rendering import ViewRenderer
from traitflow.profile_counts import departures, recount
from traitflow.state_cache import Checkout
from traitflow.store import Conflict, Expected, MessageKey, ProfileStore, RulesChanged

log = logging.getLogger(__name__)


class ComputeFailed(TraitflowError):
    """Computing a batch's effect raised (a bug some input meets), not the store: the
    caller narrows the batch down to the event that breaks it (`BatchProcessor`)."""


@dataclass(frozen=True, slots=True)
class BatchRead:
    """What an entity's batch read before computing: where its identities point, the
    profiles they name, what the commit must find unchanged, and which of its
    messageIds were applied already."""

    pointers: dict[Identity, str]
    states: dict[str, ProfileState]
    expected: Expected
    applied: set[MessageKey]
    #: the tombstones of those of its identities that were erased
    tombstones: dict[Identity, Tombstone]


@contextmanager
def computing() -> Iterator[None]:
    """Marks pure computation: what it raises is a `ComputeFailed`, whatever it was."""
    try:
        yield
    except Exception as exc:
        raise ComputeFailed(f"{exc!r}") from exc


class EntityProcessor(ProfileApplier, Lifetimes):
    """Builds the profiles of one entity (`user`, `account`, ...) from its events.

    Not safe to run concurrently with itself: `BatchProcessor` holds its lock around
    every call, and sets, once per batch, `now`, the processing time (epoch ms)
    windows are evaluated at, and `floors`, per input partition of the batch the offset
    before its first (every record below it is committed: `attributes.profile.settle`)."""

    def __init__(
        self,
        entity: str,
        *,
        rules: RuleSet,
        identities: IdentityRules,
        store: ProfileStore,
        sources: Mapping[str, str],
        policy: MergePolicy,
        retractions: Mapping[str, Retraction],
        remembered_renders: int = 100_000,
        idle_ttl_ms: int | None = None,
        anonymous_types: frozenset[str] = frozenset({"anonymous_id"}),
        announcer: Announcer | None = None,
        records: Mapping[str, RecordMapping] | None = None,
        time_refresh_ms: int = DEFAULT_REFRESH_MS,
        trust: SourceTrust = TRUST_NONE,
    ) -> None:
        self.entity = entity
        self.rules = rules
        self.identities = identities
        self.store = store
        #: topic -> the source its events come from (a topic not listed: its own name)
        self.sources = sources
        #: the merge policy of the materialised views
        self.policy = policy
        #: source -> what its `delete` events remove (a source not listed: its fields)
        self.retractions = retractions
        #: what each source's events may link (`attributes.stitching`, trusted links)
        self.trust = trust
        self.now = 0
        self.floors: dict[str, int] = {}
        #: how long an anonymous-only profile (identities of `anonymous_types` alone)
        #: lives without a write (ms); None: for good
        self.idle_ttl_ms = idle_ttl_ms
        self.anonymous_types = anonymous_types
        #: what its committed writes announce (audience changes, profile changes)
        self.announcer = announcer or Announcer(entity=entity, audience_topic=None)
        #: the entity's collections with a field mapping: each write renders their records
        self.views = ViewRenderer(
            rules=rules,
            policy=policy,
            remembered=remembered_renders,
            records=records,
            time_refresh_ms=time_refresh_ms,
        )
        #: the rules version `rules` is (`traitflow.rule_catalog`; 0: the file alone)
        self.rules_version = 0

    def trust_of(self, topic: str) -> tuple[str, Trust]:
        """The source a topic's events come from, and what they may link."""
        source = self.sources.get(topic, topic)
        return source, self.trust.of(source)

    def anchored(self, identities: list[Identity], topic: str) -> list[Identity]:
        """An event's identities with the one it is applied to first (`attributes.
        stitching.anchored`): what every lookup of an event's profile goes by."""
        _, trust = self.trust_of(topic)
        if trust is Trust.TRUSTED:
            return identities
        return anchored(self.identities, identities, trust, anonymous=self.anonymous_types)

    def forget_renders(self) -> None:
        """Drop the remembered renders (their states are gone from the store's cache)."""
        self.views.clear()

    def checkout(self) -> Checkout:
        """The hold of one attempt at a batch on the states it loads: leaving it forgets
        those it did not commit, and their remembered renders (`Checkout`)."""
        return Checkout(
            self.store, self.entity, forget=self.views.forget, rules_version=self.rules_version
        )

    def switch(self, rules: RuleSet, rules_version: int) -> None:
        """Compute with `rules`, the rules version `rules_version`, from the next batch
        on: every commit after is made at that version, or refused."""
        self.rules, self.rules_version = rules, rules_version
        self.views = self.views.switched(rules, rules_version)

    async def commit(
        self,
        work: Checkout,
        stitched: Stitched,
        report: BatchReport,
        *,
        committed: Callable[[list[Identified]], None] | None = None,
    ) -> list[Identified]:
        """Commit a batch's effect and report it; return the events to compute again.

        When the commit finds that another worker changed something the batch read,
        the parts of the batch that read none of it are committed (`effects.split`),
        and the events of the others are returned (their states are not committed:
        `work` forgets them when it ends).

        A refused commit that committed parts all the same (the spread layout's
        buckets commit one by one) hands their events to `committed` first: a switch
        of rules versions needs to know which events were committed at the older one
        (`streams.rule_versions`)."""
        redo: list[Identified] = []
        if self.announcer.announces:  # once: a split commit keeps the writes' messages
            self.announcer.announce(stitched.writes, stitched.removed, self.now)
        profile_id = self.identities.profile_id
        while stitched.writes or stitched.removed:
            try:
                await work.commit(
                    stitched.writes, removed=stitched.removed, expected=stitched.expected
                )
            except RulesChanged as changed:
                if committed is not None and changed.committed:
                    committed(committed_events(stitched, changed.committed, profile_id))
                raise
            except Conflict as conflict:
                if committed is not None and conflict.committed:
                    committed(committed_events(stitched, conflict.committed, profile_id))
                report.conflicts += 1
                log.debug("part of a batch computed again: %s", conflict)
                stitched, stale = split(stitched, conflict, self.identities.profile_id)
                redo += stale.events
                continue
            break
        stitched.report_to(report)
        return redo

    async def stitch(
        self, work: Checkout, events: list[Identified], rejected: list[tuple[Record, str]]
    ) -> Stitched:
        """Where the events belong (`attributes.stitching`), the merges they make, and
        the writes of every profile they change, with what the commit must find. The
        states are loaded through `work`, which owns them until they are committed."""
        read = await self._read(work, events)
        return await self._stitched(work, events, read=read, rejected=rejected)

    async def _read(self, work: Checkout, events: Sequence[Identified]) -> BatchRead:
        """Where the events' identities point, the profiles they name (and those a new
        identity's profile id may already name), what the commit must find, and which
        of the events' messageIds are applied already."""
        wanted = list(dict.fromkeys(i for item in events for i in (*item.ids, *item.previous)))
        messages = list(dict.fromkeys(item.message for item in events if item.message))
        pointers, applied, tombstones = await asyncio.gather(
            self.store.lookup(self.entity, wanted),
            self.store.applied(self.entity, messages),
            self.store.tombstones(self.entity, wanted),
        )
        candidates = [
            self.identities.profile_id(*item.ids[0])
            for item in events
            if item.ids[0] not in pointers
        ]
        ids = list(dict.fromkeys([*pointers.values(), *candidates]))
        states = await work.load(ids)
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
            self.views.fit(state)
        return BatchRead(pointers, states, expected, applied, decoded(tombstones))

    async def _stitched(
        self,
        work: Checkout,
        events: list[Identified],
        *,
        read: BatchRead,
        rejected: list[tuple[Record, str]],
    ) -> Stitched:
        states, expected = read.states, read.expected
        stitched = Stitched(events, read.pointers, expected=expected, profiles=[*states])
        # A pointer to a profile that is gone (merged away by another worker between the
        # two reads) is left out: its identity looks new, and the commit, which expects
        # the pointer as read, finds it moved and has the batch computed again.
        pointers = {identity: pid for identity, pid in read.pointers.items() if pid in states}
        expiring = {pid for pid, state in states.items() if self._expiring(state)}
        with computing():
            fresh = self._fresh(events, pointers=pointers, read=read, stitched=stitched)
            stitcher = Stitcher(self.identities, pointers, states, anonymous=self.anonymous_types)
            for item in fresh:
                source, trust = self.trust_of(item.record.topic)
                stitcher.assign(item.ids, item.previous, item.at, trust=trust, source=source)
            plan = stitcher.finish()
            for refusal in plan.refusals:
                stitched.found(refusal.profile).refusals.append(refusal)
            for pid in plan.created:
                states[pid] = ProfileState(id=pid, entity=self.entity)
                expected.versions.setdefault(pid, None)
            merged: set[str] = set()
            #: survivor -> the audiences of the profiles it absorbed (they leave them):
            #: those of kept profiles; (profile, audience) of expiring ones
            departed: dict[str, list[str]] = {}
            departed_expiring: dict[str, list[tuple[str, str]]] = {}
            #: survivor -> the profiles merged into it, through others too
            absorbed_by: dict[str, list[str]] = {}
            for absorbed, survivor in plan.merges:
                stitched.found(absorbed).merges += 1
                absorbed_by.setdefault(survivor, []).extend(
                    [absorbed, *absorbed_by.pop(absorbed, ())]
                )
                held = states[absorbed].audiences
                gone = [*departed.pop(absorbed, ()), *(() if absorbed in expiring else held)]
                departed.setdefault(survivor, []).extend(gone)
                gone_expiring = departed_expiring.pop(absorbed, [])
                if absorbed in expiring:
                    gone_expiring += ((absorbed, name) for name in held)
                departed_expiring.setdefault(survivor, []).extend(gone_expiring)
                merge_states(states[survivor], states[absorbed], self.rules)
                merged.add(survivor)
                self.views.forget([survivor])  # its remembered values are not the merge's
            counted_away = departures(plan.merges, states, expiring)  # as `departed`
        stitched.removed = [absorbed for absorbed, _ in plan.merges]  # loaded or created
        stitched.profiles += plan.created

        by_profile: dict[str, list[Identified]] = {}
        for item, pid in zip(fresh, plan.profiles, strict=True):
            by_profile.setdefault(pid, []).append(item)
        for pid, items in by_profile.items():
            state = states[pid]
            links = list(dict.fromkeys(plan.links.get(pid, ())))
            try:
                if links:
                    for kind, value in links:
                        add_identity(state, kind, value)
                    state.identities = self.identities.in_priority_order(state.identities)
                # what the slow path starts again from; a merged state is nowhere else
                snapshot = encode_state(state) if pid in merged else None
            except Exception as exc:  # `computing`, without a context manager per profile
                raise ComputeFailed(f"{exc!r}") from exc
            changed = bool(links) or pid in merged
            report = stitched.found(pid)
            mark = report.mark()
            try:
                write = self._apply(state, items, report, changed=changed)
            except Exception:
                # A bug met by some input must not stall the partition (the batch would be
                # retried forever): find the events that break, dead-letter only those.
                log.exception("profile %s failed; applying its events one by one", pid)
                report.rollback(mark)
                base = await self._before(work, pid, snapshot=snapshot, links=links)
                write = await self._apply_each(
                    base, items, report, rejected=rejected, changed=changed
                )
            if write is not None:
                write.identities = links
                write.absorbed = absorbed_by.get(pid, ())
                write.departed = departed.get(pid, [])
                write.departed_expiring = departed_expiring.get(pid, [])
                write.categories_departed = counted_away[0].get(pid, [])
                write.categories_departed_expiring = counted_away[1].get(pid, [])
                write.was_expiring = pid in expiring
                self._lifetime(write, links)
                write.job = erase_job(items)
                erasing, request = erase_request(items)
                if erasing and write.state.deleted:  # not when one source's traits went
                    self.views.forget([pid])
                    ids = profile_identities(write)
                    earlier = decoded(await self.store.tombstones(self.entity, ids))
                    erase(write, request=request, earlier=earlier.values(), now=self.now)
                    report.erasures += 1
                recount(write)  # its profile counts (`traitflow.profile_counts`)
                stitched.writes.append(write)
        return stitched

    def _fresh(
        self,
        events: list[Identified],
        *,
        pointers: dict[Identity, str],
        read: BatchRead,
        stitched: Stitched,
    ) -> list[Identified]:
        """The events not applied before: neither a redelivered record (its offset is
        applied to the profile its identity points to, or to one erased since:
        `streams.erasures`) nor a producer's retry (its messageId is applied, or was
        earlier in this batch). Those are counted as duplicates and not stitched again:
        the graph has moved on since, and stitching them now could merge what they never
        did."""
        fresh: list[Identified] = []
        states, tombstones = read.states, read.tombstones
        seen = set(read.applied)
        for item in events:
            owner = states.get(pointers.get(item.ids[0], ""))
            record = item.record
            applied = owner is not None and applied_before(owner, record.log, record.offset)
            if applied:
                stitched.redelivered.append(item)
            if (
                applied
                or (item.message is not None and item.message in seen)
                or erased_event(item, tombstones)
            ):
                pid = owner.id if owner is not None else self.identities.profile_id(*item.ids[0])
                stitched.found(pid).duplicates += 1
                continue
            if item.message is not None:
                seen.add(item.message)
            fresh.append(item)
        return fresh
