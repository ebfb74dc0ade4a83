"""What one commit of the Redis store checks and writes, worked out before it talks to
Redis: the checks it makes and the commands it runs, which `RedisProfileStore.commit`
hands to the commit script (`traitflow.commit_script`) in one call.

Building it is pure, so what a commit writes is tested without a server
(`tests/unit/test_commit_plan.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traitflow.audience_counts import SizeChanges, size_changes
from traitflow.commit_script import CommandList
from traitflow.key_layout import KeyLayout
from traitflow.outbox import entry_fields
from traitflow.profile_counts import category_moves
from traitflow.store import (
    ERASURE_STATUS_TTL_MS,
    Conflict,
    Erasure,
    Expected,
    Identity,
    ProfileWrite,
    RulesChanged,
)


@dataclass(frozen=True, slots=True)
class RulesAt:
    """The rules version a commit was computed with: what its check guards."""

    version: int


@dataclass(slots=True)
class CommitPlan:
    keys: KeyLayout
    entity: str
    #: the commit's time (ms): dedupe buckets and expiring audience members use it
    now: int
    #: key -> (the value it must still have, the identity, profile or rules version it
    #: guards)
    checks: dict[str, tuple[bytes, Identity | str | RulesAt]] = field(default_factory=dict)
    sets: dict[str, bytes | str] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    #: expiry index key -> {profile id: when its windows next change}; ids that leave it
    scheduled: dict[str, dict[str, int]] = field(default_factory=dict)
    unscheduled: dict[str, list[str]] = field(default_factory=dict)
    #: source -> the messageIds this commit applies
    messages: dict[str, list[str]] = field(default_factory=dict)
    #: key -> its idle lifetime (ms); keys that must lose theirs
    expiring: dict[str, int] = field(default_factory=dict)
    persisted: list[str] = field(default_factory=list)
    sizes: SizeChanges = field(default_factory=SizeChanges)
    #: the changes of the profile counts (`traitflow.profile_counts`)
    counts: SizeChanges = field(default_factory=SizeChanges)
    #: (outbox key, message) to publish once committed (`traitflow.outbox`)
    outgoing: list[tuple[str, dict[Any, Any]]] = field(default_factory=list)
    #: source delete jobs whose commands this commit applies, once per command
    jobs: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        keys: KeyLayout,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
        now: int,
    ) -> CommitPlan:
        plan = cls(keys, entity, now, sizes=size_changes(writes, now))
        plan.counts = size_changes(writes, now, category_moves)
        if expected is not None:
            plan._expect(expected)
        mapped = {collection for write in writes for collection in write.records}
        for pid in removed:
            plan.deletes += [
                keys.state(entity, pid),
                keys.view(entity, pid),
                keys.version(entity, pid),
                *(keys.record(entity, collection, pid) for collection in mapped),
            ]
        for write in writes:
            plan._add(write)
        return plan

    def _expect(self, expected: Expected) -> None:
        keys, entity = self.keys, self.entity
        for identity, pid in expected.pointers.items():
            self.checks[keys.index(entity, *identity)] = ((pid or "").encode(), identity)
        for pid, version in expected.versions.items():
            want = b"" if version is None else str(version).encode()
            self.checks[keys.version(entity, pid)] = (want, pid)
        if (rules := expected.rules_version) is not None:
            want = str(rules).encode() if rules else b""  # version 0: no key yet
            self.checks[keys.rules_version()] = (want, RulesAt(rules))

    def _add(self, write: ProfileWrite) -> None:
        keys, entity, pid = self.keys, self.entity, write.state.id
        sets = self.sets
        if write.job is not None:
            self.jobs.append(write.job)
        if write.erasure is not None:
            self._erase(write, write.erasure)
            return
        sets[keys.state(entity, pid)] = write.encoded_state
        if write.view is None:
            self.deletes.append(keys.view(entity, pid))
        else:
            sets[keys.view(entity, pid)] = write.view
        sets[keys.version(entity, pid)] = str(write.state.version)
        for collection, record in write.records.items():
            if record is None:
                self.deletes.append(keys.record(entity, collection, pid))
            else:
                sets[keys.record(entity, collection, pid)] = record
        for index, value in write.identities:
            sets[keys.index(entity, index, value)] = pid
        for source, mid in write.messages:
            self.messages.setdefault(source, []).append(mid)
        if write.ttl_ms is not None:
            owned = [keys.state(entity, pid), keys.view(entity, pid), keys.version(entity, pid)]
            owned += (keys.record(entity, collection, pid) for collection in write.records)
            owned += (
                keys.index(entity, kind, value)
                for kind, values in write.state.identities.items()
                for value in values
            )
            self.expiring.update(dict.fromkeys(owned, write.ttl_ms))
        self.persisted += (keys.index(entity, *identity) for identity in write.persist)
        if write.expiry is not None:
            source, when = write.expiry
            if when is None:
                self.unscheduled.setdefault(keys.expiries(entity, source), []).append(pid)
            else:
                self.scheduled.setdefault(keys.expiries(entity, source), {})[pid] = when
        outbox = keys.outbox(write.source)
        self.outgoing += ((outbox, entry_fields(message)) for message in write.outgoing)

    def _erase(self, write: ProfileWrite, erasure: Erasure) -> None:
        """Every key of the profile goes (its audience memberships leave with the sizes:
        the write's `exited`); its identities' tombstones and the request's status stay."""
        keys, entity, pid = self.keys, self.entity, write.state.id
        self.deletes += [
            keys.state(entity, pid),
            keys.view(entity, pid),
            keys.version(entity, pid),
            *(keys.record(entity, collection, pid) for collection in write.records),
            *(keys.index(entity, *identity) for identity in erasure.identities),
        ]
        for partition in erasure.partitions:
            self.unscheduled.setdefault(keys.expiries(entity, partition), []).append(pid)
        for digest, tombstone in erasure.tombstones.items():
            self.sets[keys.tombstone(entity, digest)] = tombstone
        if erasure.request:
            status = keys.erasure(erasure.request)
            self.sets[status] = erasure.status
            self.expiring[status] = ERASURE_STATUS_TTL_MS
        for source, mid in write.messages:
            self.messages.setdefault(source, []).append(mid)
        outbox = keys.outbox(write.source)
        self.outgoing += ((outbox, entry_fields(message)) for message in write.outgoing)

    def conflict(self, found: Sequence[bytes | None]) -> Conflict | RulesChanged | None:
        """What changed, given the values of `checks`' keys now (in their order): the
        rules first (all the rest is computed again anyway)."""
        stale = [
            guarded
            for (want, guarded), have in zip(self.checks.values(), found, strict=True)
            if (have or b"") != want
        ]
        if not stale:
            return None
        if rules := [g for g in stale if isinstance(g, RulesAt)]:
            return RulesChanged(rules[0].version)
        return Conflict(
            [g for g in stale if isinstance(g, tuple)], [g for g in stale if isinstance(g, str)]
        )

    def queue(self, transaction: CommandList, *, bucket_ms: int, dedupe_window_ms: int) -> None:
        """Queue every write in `transaction`, which the commit script runs once its
        checks hold (`traitflow.commit_script`). Applied messageIds go to the dedupe
        bucket of `now`, `bucket_ms` long, kept until no lookup's window
        (`dedupe_window_ms`) reaches back into it."""
        if self.sets:
            transaction.mset(self.sets)
        if self.deletes:
            transaction.delete(*self.deletes)
        for key, members in self.scheduled.items():
            transaction.zadd(key, members)
        for key, pids in self.unscheduled.items():
            transaction.zrem(key, *pids)
        if self.messages:
            bucket = self.now // bucket_ms
            gone = (bucket + 1) * bucket_ms + dedupe_window_ms
            for source, mids in self.messages.items():
                key = self.keys.messages(self.entity, source, bucket)
                transaction.sadd(key, *mids)
                transaction.pexpireat(key, gone)
        for key, ttl in self.expiring.items():
            transaction.pexpire(key, ttl)
        for key in self.persisted:
            transaction.persist(key)
        self._count(transaction)
        for job in self.jobs:
            transaction.hincrby(self.keys.source_job(job), "applied", 1)
        for outbox, fields in self.outgoing:
            transaction.xadd(outbox, fields)

    def _count(self, transaction: CommandList) -> None:
        """The changes of audience sizes (`traitflow.audience_counts`) and profile
        counts (`traitflow.profile_counts`), in the same commit as the writes that
        make them; the expiring members of the names it touches whose deadline has passed go."""
        keys, entity = self.keys, self.entity
        self._sized(
            transaction,
            self.sizes,
            keys.audience_sizes(entity),
            (keys.expiring_audiences(entity), keys.expiring_members(entity, "")),
        )
        self._sized(
            transaction,
            self.counts,
            keys.profile_counts(entity),
            (keys.expiring_categories(entity), keys.expiring_profiles(entity, "")),
        )

    def _sized(
        self, transaction: CommandList, sizes: SizeChanges, kept: str, expiring: tuple[str, str]
    ) -> None:
        """`sizes` into hash `kept`, set `expiring[0]` (the names with expiring
        members) and the sorted sets named `expiring[1]` + name."""
        names, members_of = expiring
        for name, change in sizes.kept.items():
            transaction.hincrby(kept, name, change)
        for name, members in sizes.expiring.items():
            transaction.zadd(members_of + name, members)
        for name, pids in sizes.dropped.items():
            transaction.zrem(members_of + name, *pids)
        if touched := sizes.touched():
            transaction.sadd(names, *touched)
            for name in touched:
                transaction.zremrangebyscore(members_of + name, "-inf", self.now)
