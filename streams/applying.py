"""Applying one profile's events of a batch (`ProfileApplier`, a part of
`streams.entity.EntityProcessor`): all at once, and, when that raises, one by one on
copies of the state before them, to keep those that work.

It is apart from stitching because it is the per-event loop of the hot path and the
one place an event meets the rules (`attributes.profile.apply_event`): a new kind of
event effect (a retraction, an erasure) is a change here, and the slow path that
isolates the event a bug breaks on stays next to the fast path it repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attributes.erasure import ERASE
from attributes.identities import IdentityRules
from attributes.profile import (
    ProfileState,
    Retraction,
    add_identity,
    apply_event,
    decode_state,
    encode_state,
    settle,
)
from attributes.ruleset import RuleSet
from attributes.stitching import Identity
from streams.erasures import erase_retraction
from streams.records import BatchReport, Identified, Record
from streams.rendering import ViewRenderer
from traitflow.state_cache import Checkout
from traitflow.store import MessageKey, ProfileWrite


class ProfileApplier:
    """How `EntityProcessor` applies a profile's events; its `__init__` sets these."""

    entity: str
    rules: RuleSet
    identities: IdentityRules
    sources: Mapping[str, str]
    retractions: Mapping[str, Retraction]
    now: int
    floors: dict[str, int]
    views: ViewRenderer

    def _apply(
        self,
        state: ProfileState,
        items: Sequence[Identified],
        report: BatchReport,
        *,
        changed: bool = False,
    ) -> ProfileWrite | None:
        """Apply a profile's events of this batch; the write, or None if nothing
        changed (`changed`: the state was changed before, by a merge or a link)."""
        source = ""
        touched: set[str] = set()
        messages: list[MessageKey] = []
        for item in items:
            record, event = item.record, item.event
            source = record.source
            origin = self.sources.get(record.topic, record.topic)
            retraction = self.retractions.get(origin, "fields")
            if event.type == ERASE:  # all of the profile, or what one source contributed
                origin, retraction = erase_retraction(event, state, self.sources)
            applied = apply_event(
                state,
                event,
                ts=item.at,
                rules=self.rules,
                source=record.log,
                offset=record.offset,
                now=self.now,
                origin=origin,
                retraction=retraction,
                traits_from=self.identities.spec.traits_from,
            )
            changed |= applied.changed
            report.duplicates += not applied.changed
            report.skips.extend(applied.skips)
            touched.update(applied.touched)
            if applied.changed and item.message is not None:
                messages.append(item.message)
        if not changed:
            return None
        settle(state, self.floors)
        write = self.views.write(state, source, touched=touched, now=self.now)
        write.messages = messages
        return write

    async def _apply_each(
        self,
        base: ProfileState,
        items: Sequence[Identified],
        report: BatchReport,
        *,
        rejected: list[tuple[Record, str]],
        changed: bool,
    ) -> ProfileWrite | None:
        """The slow path: each event on a fresh copy of `base` (the state before the
        batch's events), keeping the copies that work."""
        state = base
        write = None
        messages: list[MessageKey] = []
        stored = list(base.audiences)  # each trial's write compares with the one before
        for item in items:
            trial = decode_state(encode_state(state))
            mark = report.mark()
            try:
                outcome = self._apply(trial, [item], report, changed=changed and write is None)
            except Exception as exc:
                report.rollback(mark)
                rejected.append((item.record, f"event could not be applied: {exc!r}"))
                continue
            if outcome is not None:
                state, write = trial, outcome
                messages += outcome.messages
        if write is not None:
            write.messages = messages
            kept = write.state.audiences
            write.entered = [name for name in kept if name not in stored]
            write.exited = [name for name in stored if name not in kept]
        return write

    async def _before(
        self, work: Checkout, pid: str, *, snapshot: bytes | None, links: Sequence[Identity]
    ) -> ProfileState:
        """A profile as it was before the batch's events: the snapshot of a merged
        one, else the stored state (or a new one) with the batch's links."""
        if snapshot is not None:
            return decode_state(snapshot)
        state = await work.reload(pid)
        state = state or ProfileState(id=pid, entity=self.entity)
        self.views.fit(state)
        for kind, value in links:
            add_identity(state, kind, value)
        return state
