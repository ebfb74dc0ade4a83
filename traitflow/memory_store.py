"""A dict-backed profile store with the Redis store's semantics, for tests of pure
logic and for the demo's oracle: nothing expires here, but the audience sizes follow
the deadlines a Redis store would set (on an injectable clock)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attributes.erasure import identity_digest
from attributes.profile import ProfileState, decode_state
from traitflow.audience_counts import SizeChanges, size_changes
from traitflow.profile_counts import category_moves
from traitflow.store import (
    PRIMARY_INDEX,
    Conflict,
    Erasure,
    Expected,
    Found,
    Identity,
    MessageKey,
    Outgoing,
    ProfileStore,
    ProfileWrite,
    RulesChanged,
    now_ms,
    record_header,
)


class MemoryProfileStore(ProfileStore):
    """A dict-backed store with the same semantics, for tests of pure logic."""

    def __init__(self, clock: Callable[[], int] = now_ms) -> None:
        self.states: dict[tuple[str, str], bytes] = {}
        self.views: dict[tuple[str, str], bytes] = {}
        #: (entity, collection, profile id) -> its record document
        self.records: dict[tuple[str, str, str], bytes] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.index: dict[tuple[str, str, str], str] = {}
        self.expiries: dict[tuple[str, str], dict[str, int]] = {}
        #: (entity, source, messageId) of applied events (kept for good: tests are short)
        self.messages: set[tuple[str, str, str]] = set()
        #: (entity, profile id) -> the idle lifetime its last write gave it (nothing
        #: expires here: tests read what a Redis store would be told)
        self.ttls: dict[tuple[str, str], int] = {}
        #: (entity, audience) -> its count of kept members; its expiring members, with
        #: their deadlines (`traitflow.audience_counts`), counted until `clock()` passes
        self.sizes: dict[tuple[str, str], int] = {}
        self.expiring: dict[tuple[str, str], dict[str, int]] = {}
        #: the same for the profile counts' categories (`traitflow.profile_counts`)
        self.counts: dict[tuple[str, str], int] = {}
        self.expiring_counted: dict[tuple[str, str], dict[str, int]] = {}
        self.clock = clock
        #: the current rules version (`traitflow.rule_catalog`): a test moves it
        self.rules_version = 0
        #: input partition -> the messages committed writes left in its outbox
        self.outboxes: dict[str, list[Outgoing]] = {}
        #: (entity, identity digest) -> its tombstone; request id -> erase status
        self.tombstone_keys: dict[tuple[str, str], bytes] = {}
        self.erasures: dict[str, bytes] = {}
        #: source delete job -> its commands committed
        self.job_tallies: dict[str, int] = {}

    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        return {
            identity: self.index[(entity, *identity)]
            for identity in identities
            if (entity, *identity) in self.index
        }

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        return {
            pid: decode_state(self.states[(entity, pid)])
            for pid in ids
            if (entity, pid) in self.states
        }

    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        held = self.tombstone_keys
        digests = {
            identity: (entity, identity_digest(entity, *identity)) for identity in identities
        }
        return {i: held[key] for i, key in digests.items() if key in held}

    async def note_erasure(self, request: str, status: bytes) -> None:
        self.erasures[request] = status

    async def erasure_status(self, request: str) -> bytes | None:
        return self.erasures.get(request)

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        return {key for key in messages if (entity, *key) in self.messages}

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        if expected is not None:
            computed_with = expected.rules_version
            if computed_with is not None and computed_with != self.rules_version:
                raise RulesChanged(computed_with)
            pointers, versions = self.index, self.versions
            moved = [i for i, p in expected.pointers.items() if pointers.get((entity, *i)) != p]
            changed = [p for p, v in expected.versions.items() if versions.get((entity, p)) != v]
            if moved or changed:
                raise Conflict(moved, changed)
        now = self.clock()
        self._count(entity, size_changes(writes, now), (self.sizes, self.expiring))
        counted = (self.counts, self.expiring_counted)
        self._count(entity, size_changes(writes, now, category_moves), counted)
        mapped = {collection for write in writes for collection in write.records}
        for profile in removed:
            for store in (self.states, self.views, self.versions, self.ttls):
                store.pop((entity, profile), None)
            for collection in mapped:
                self.records.pop((entity, collection, profile), None)
        for write in writes:
            key = (entity, write.state.id)
            if write.job is not None:
                self.job_tallies[write.job] = self.job_tallies.get(write.job, 0) + 1
            if write.erasure is not None:
                self._erase(entity, write, write.erasure)
                continue
            self.states[key] = write.encoded_state
            for collection, record in write.records.items():
                if record is None:
                    self.records.pop((entity, collection, write.state.id), None)
                else:
                    self.records[(entity, collection, write.state.id)] = record
            if write.view is None:
                self.views.pop(key, None)
            else:
                self.views[key] = write.view
            self.versions[key] = write.state.version
            for index, value in write.identities:
                self.index[(entity, index, value)] = write.state.id
            self.messages.update((entity, *message) for message in write.messages)
            if write.outgoing:
                self.outboxes.setdefault(write.source, []).extend(write.outgoing)
            if write.ttl_ms is None:
                self.ttls.pop(key, None)
            else:
                self.ttls[key] = write.ttl_ms
            if write.expiry is not None:
                source, when = write.expiry
                scheduled = self.expiries.setdefault((entity, source), {})
                if when is None:
                    scheduled.pop(write.state.id, None)
                else:
                    scheduled[write.state.id] = when

    def _erase(self, entity: str, write: ProfileWrite, erasure: Erasure) -> None:
        pid = write.state.id
        for store in (self.states, self.views, self.versions, self.ttls):
            store.pop((entity, pid), None)
        for collection in write.records:
            self.records.pop((entity, collection, pid), None)
        for identity in erasure.identities:
            self.index.pop((entity, *identity), None)
        for partition in erasure.partitions:
            self.expiries.get((entity, partition), {}).pop(pid, None)
        for digest, tombstone in erasure.tombstones.items():
            self.tombstone_keys[(entity, digest)] = tombstone
        if erasure.request:
            self.erasures[erasure.request] = erasure.status
        self.messages.update((entity, *message) for message in write.messages)
        if write.outgoing:
            self.outboxes.setdefault(write.source, []).extend(write.outgoing)

    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        scheduled = self.expiries.get((entity, source), {})
        ordered = sorted((when, pid) for pid, when in scheduled.items() if when <= now)
        return [pid for _, pid in ordered[:limit]]

    @staticmethod
    def _count(
        entity: str,
        changes: SizeChanges,
        into: tuple[dict[tuple[str, str], int], dict[tuple[str, str], dict[str, int]]],
    ) -> None:
        kept, expiring = into
        for name, change in changes.kept.items():
            kept[(entity, name)] = kept.get((entity, name), 0) + change
        for name, members in changes.expiring.items():
            expiring.setdefault((entity, name), {}).update(members)
        for name, pids in changes.dropped.items():
            for pid in pids:
                expiring.get((entity, name), {}).pop(pid, None)

    async def audience_sizes(self, entity: str) -> dict[str, int]:
        return self._sized(entity, self.sizes, self.expiring)

    async def profile_counts(self, entity: str) -> dict[str, int]:
        return self._sized(entity, self.counts, self.expiring_counted)

    def _sized(
        self,
        entity: str,
        kept: dict[tuple[str, str], int],
        expiring: dict[tuple[str, str], dict[str, int]],
    ) -> dict[str, int]:
        sizes = {name: size for (owner, name), size in kept.items() if owner == entity}
        now = self.clock()
        for (owner, name), members in expiring.items():
            if owner == entity:
                alive = sum(deadline > now for deadline in members.values())
                sizes[name] = sizes.get(name, 0) + alive
        return sizes

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        scheduled = self.expiries.get((entity, source), {})
        for pid in ids:
            scheduled.pop(pid, None)

    def _served(self, entity: str, index: str, value: str) -> tuple[str, str] | None:
        """The (entity, id) key of the profile `index`=`value` finds, if it has a view."""
        pid = value if index == PRIMARY_INDEX else self.index.get((entity, index, value))
        key = (entity, pid or "")
        return key if pid is not None and key in self.views else None

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        key = self._served(entity, index, value)
        return None if key is None else self.views[key]

    async def read_records(
        self, entity: str, lookups: Sequence[tuple[str, str]], *, collection: str, stamp: str
    ) -> list[Found | None]:
        found: list[Found | None] = []
        for index, value in lookups:
            key = self._served(entity, index, value)
            if key is None:
                found.append(None)
                continue
            record = self.records.get((entity, collection, key[1]), b"")
            header = record_header(stamp, self.versions.get(key))
            if record.startswith(header):
                found.append((True, record[len(header) :]))
            else:
                found.append((False, self.views[key]))
        return found

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        keys = [self._served(entity, index, value) for index, value in lookups]
        return [None if key is None else (self.views[key], self.states[key]) for key in keys]
