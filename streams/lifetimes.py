"""How long a profile lives, and the writes time makes without an event
(`Lifetimes`, a part of `streams.entity.EntityProcessor`).

An anonymous-only profile expires when idle; one that stops being anonymous-only
keeps its keys for good; and a profile whose windows move (or whose view reads
`now`) is written again at the time it is due, with no event (an expiry round), as
a backfill's write is. Those writes and every event's write must agree on a profile's
lifetime and on where it is counted, so what decides both is here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attributes.profile import ProfileState
from attributes.stitching import Identity
from streams.announcements import Announcer
from streams.rendering import ViewRenderer
from traitflow.profile_counts import recount
from traitflow.store import Conflict, Expected, ProfileStore, ProfileWrite

if TYPE_CHECKING:
    from traitflow.state_cache import Checkout

#: the entity processor's logger: its messages keep the name they had before this module
log = logging.getLogger("streams.entity")


class Lifetimes:
    """How `EntityProcessor` keeps profiles' lifetimes and re-renders due ones; its
    `__init__` sets these."""

    entity: str
    store: ProfileStore
    now: int
    #: how long an anonymous-only profile lives without a write (ms); None: for good
    idle_ttl_ms: int | None
    anonymous_types: frozenset[str]
    announcer: Announcer
    views: ViewRenderer

    if TYPE_CHECKING:

        def checkout(self) -> Checkout: ...

    def _expiring(self, state: ProfileState) -> bool:
        """Whether the profile's keys expire when idle: anonymous-only, with a TTL."""
        held = state.identities
        return self.idle_ttl_ms is not None and bool(held) and held.keys() <= self.anonymous_types

    def _lifetime(self, write: ProfileWrite, links: Sequence[Identity] = ()) -> None:
        """An anonymous-only profile expires when idle (`idle_ttl_ms`); one that just
        stopped being anonymous-only (a link of another type) keeps its anonymous index
        keys for good. Every other key this write sets loses any expiry by being set."""
        if self.idle_ttl_ms is None:
            return
        anonymous = self.anonymous_types
        held = write.state.identities
        if self._expiring(write.state):
            write.ttl_ms = self.idle_ttl_ms
        elif any(kind not in anonymous for kind, _ in links):
            linked = set(links)
            write.persist = [
                (kind, value)
                for kind in anonymous
                for value in held.get(kind, ())
                if (kind, value) not in linked  # set by this write: no expiry left
            ]

    def rerendered(self, write: ProfileWrite) -> None:
        """A write made with no event (a window moved, a backfill joined): its idle
        lifetime, and where its audiences are counted, from its identities as loaded."""
        write.was_expiring = self._expiring(write.state)
        self._lifetime(write)
        recount(write)

    async def expire(self, source: str, limit: int) -> int:
        """Re-render the profiles indexed under `source` whose windows have moved by
        `now`; return how many were written. The cost is that of the due profiles only."""
        due = await self.store.due(self.entity, source, now=self.now, limit=limit)
        if not due:
            return 0
        async with self.checkout() as work:
            states = await work.load(due)
            if gone := [pid for pid in due if pid not in states]:
                await self.store.unschedule(self.entity, source, gone)  # indexed, then deleted
            writes = []
            broken = []
            for state in states.values():
                try:
                    self.views.fit(state)
                    write = self.views.write(state, source, touched=set(), now=self.now)
                except Exception:
                    # a bug this profile meets must not stop the others' windows: it leaves
                    # the index (its next event schedules it again)
                    log.exception("profile %s could not be re-rendered; unscheduled", state.id)
                    broken.append(state.id)
                    continue
                self.rerendered(write)  # a window that moved counts as activity
                writes.append(write)
            if broken:
                await self.store.unschedule(self.entity, source, broken)
            versions: dict[str, int | None] = {
                w.state.id: states[w.state.id].version for w in writes
            }
            if self.announcer.announces:  # a window that moved can end a membership
                self.announcer.announce(writes, (), self.now)
            try:
                await work.commit(writes, expected=Expected(versions=versions))
            except Conflict:
                return 0  # another worker wrote one of them meanwhile (and re-rendered it)
        return len(writes)
