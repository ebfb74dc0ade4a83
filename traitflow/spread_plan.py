"""What one commit of the spread layout does, worked out before it talks to Redis: per
bucket, the single-slot script (checks and writes, as `traitflow.commit_plan` plans them
for one Redis) and the steps its intent holds; and the claims and locks it takes first
(`traitflow.spread_claims`).

Each write is planned with `CommitPlan` on its bucket's `KeyLayout`
(`traitflow.spread_layout.BucketKeys`), which names every key where the spread layout
keeps it; the keys outside the bucket's slot (pointers, tombstones, an erase request's
status, applied messageIds) are then taken out of the script and made steps of the
bucket's intent, run after the script committed. Pure, so tested without a server
(`tests/unit/test_spread_plan.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from attributes.errors import StoreError
from traitflow import spread_claims as claims
from traitflow.commit_plan import CommitPlan, RulesAt
from traitflow.commit_script import CommandList
from traitflow.key_layout import KeyLayout
from traitflow.spread_claims import CLAIMED, LOCKED, Op
from traitflow.spread_layout import SpreadLayout
from traitflow.store import Conflict, Expected, Identity, ProfileWrite, RulesChanged

#: what a check guards: an identity's pointer, a profile's version, the rules version,
#: or the absence of an "aborted" intent (the commit was rolled back meanwhile)
Guarded = Identity | str | RulesAt | None


class SpreadUnsupported(StoreError):
    """A write the spread layout cannot make yet (docs/redis-cluster.md, "Status of
    option B"): refused, rather than made without its guarantee."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A key to claim before the buckets commit: a pointer or a merged profile's
    version key (`lock`)."""

    key: str
    #: the value it must have ('' for none); None: any value not held by a commit
    want: bytes | None
    #: the claim's value, to which the script appends the old one
    value: bytes
    #: what a conflict names: the identity, or the profile id of a lock
    guarded: Identity | str
    #: the bucket whose intent decides it; None: kept as it was either way
    owner: int | None

    @property
    def lock(self) -> bool:
        return self.value.startswith(LOCKED)


@dataclass(slots=True)
class BucketCommit:
    bucket: int
    #: key -> (the value it must have, what it guards)
    checks: dict[str, tuple[bytes, Guarded]] = field(default_factory=dict)
    commands: CommandList = field(default_factory=CommandList)
    #: the intent: steps that finish the commit once this script committed
    forward: list[Op] = field(default_factory=list)
    #: steps that undo its claims if it did not
    back: list[Op] = field(default_factory=list)
    #: the profiles it writes
    profiles: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SpreadCommit:
    commit: str
    deadline: int
    buckets: dict[int, BucketCommit] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    #: steps that release the claims no bucket owns (pointers only checked)
    released: list[Op] = field(default_factory=list)

    @property
    def crosses_slots(self) -> bool:
        """Whether it needs more than the buckets' scripts (claims or intents)."""
        return bool(self.claims) or any(b.forward for b in self.buckets.values())


def plan_commit(
    layout: SpreadLayout,
    entity: str,
    writes: Sequence[ProfileWrite],
    *,
    removed: Sequence[str] = (),
    expected: Expected | None = None,
    now: int,
    commit: str,
    deadline: int,
    bucket_ms: int,
    dedupe_window_ms: int,
) -> SpreadCommit:
    """The commit of `writes`, bucket by bucket. Each bucket's script checks what
    `expected` says of its profiles and the bucket's own copy of the rules version
    (`traitflow.spread_rules`: equal to the version the writes were computed with)."""
    expected = expected or Expected()
    spread = SpreadCommit(commit, deadline)
    claimed: dict[str, Claim] = {}
    gone = set(removed)
    owners = {pid: w.state.id for w in writes for pid in w.absorbed if pid in gone}
    #: bucket -> its writes; the pointers the writes set
    by_bucket: dict[int, list[ProfileWrite]] = {}
    pointed: set[str] = set()
    for write in writes:
        pid = write.state.id
        bucket = layout.profile_bucket(entity, pid)
        part = spread.buckets.get(bucket) or spread.buckets.setdefault(bucket, BucketCommit(bucket))
        part.profiles.append(pid)
        by_bucket.setdefault(bucket, []).append(write)
        keys = layout.keys(bucket)
        for identity in write.identities:  # first: a new pointer's lifetime follows
            key = keys.index(entity, *identity)
            pointed.add(key)
            if key in claimed:
                continue
            checked = (
                expected.pointers.get(identity) or "" if identity in expected.pointers else None
            )
            claimed[key] = _claim(key, checked, commit, deadline, bucket, identity)
            part.forward.append(claims.point(key, commit, pid))
            part.back.append(claims.release(key, commit))
    for bucket, group in by_bucket.items():  # one plan per bucket, of all its writes
        part, keys = spread.buckets[bucket], layout.keys(bucket)
        versions = {
            w.state.id: expected.versions[w.state.id]
            for w in group
            if w.state.id in expected.versions
        }
        at = Expected(versions=versions, rules_version=expected.rules_version)
        plan = CommitPlan.of(keys, entity, group, expected=at, now=now)
        _take_foreign(layout, plan, part, _pointer_owners(keys, entity, group), pointed)
        _uncount_elsewhere(layout, plan, part)
        _remember(layout, plan, part, now, bucket_ms, dedupe_window_ms)
        jobs, plan.jobs = plan.jobs, []  # counted in the bucket, not in the job's hash
        plan.queue(part.commands, bucket_ms=bucket_ms, dedupe_window_ms=dedupe_window_ms)
        for job in jobs:
            part.commands.hincrby(keys.source_job_tallies(), job, 1)
        part.checks.update(plan.checks)
    for identity, pointer in expected.pointers.items():  # checked, not set: held
        key = layout.keys(0).index(entity, *identity)
        if key not in claimed:
            claimed[key] = _claim(key, pointer or "", commit, deadline, None, identity)
            spread.released.append(claims.release(key, commit))
    spread.claims = list(claimed.values())
    for pid in removed:
        _lock(layout, spread, entity, pid, expected, owner=owners.get(pid), writes=writes)
    for part in spread.buckets.values():
        if part.forward:
            keys = layout.keys(part.bucket)
            part.checks[keys.intent(commit)] = (b"", None)
            part.commands.mset({keys.intent(commit): claims.encode_intent(part.forward)})
            part.commands.zadd(keys.intents(), {commit: deadline})
    return spread


def _claim(
    key: str, want: str | None, commit: str, deadline: int, owner: int | None, guarded: Identity
) -> Claim:
    value = claims.held_value(CLAIMED, commit, deadline, -1 if owner is None else owner)
    return Claim(key, None if want is None else want.encode(), value, guarded, owner)


def _lock(
    layout: SpreadLayout,
    spread: SpreadCommit,
    entity: str,
    pid: str,
    expected: Expected,
    *,
    owner: str | None,
    writes: Sequence[ProfileWrite],
) -> None:
    """Lock a merged-away profile; the survivor's bucket deletes it once committed."""
    if owner is None:
        if not writes:
            raise SpreadUnsupported(f"profile {pid!r} is merged away into no written profile")
        owner = writes[0].state.id
    bucket = layout.profile_bucket(entity, owner)
    keys = layout.keys(bucket)
    version = expected.versions.get(pid)
    value = claims.held_value(LOCKED, spread.commit, spread.deadline, bucket)
    want = b"" if version is None else str(version).encode()
    spread.claims.append(Claim(keys.version(entity, pid), want, value, pid, bucket))
    collections = {c for w in writes for c in w.records}
    doomed = [
        keys.state(entity, pid),
        keys.view(entity, pid),
        *(keys.record(entity, c, pid) for c in sorted(collections)),
    ]
    part = spread.buckets[bucket]
    part.forward.append(claims.drop(keys.version(entity, pid), spread.commit, doomed))
    part.back.append(claims.unlock(keys.version(entity, pid), spread.commit))


def _pointer_owners(keys: KeyLayout, entity: str, group: Sequence[ProfileWrite]) -> dict[str, str]:
    """Pointer key -> the profile of `group` it belongs to: those a plan may delete
    (erasure), give a lifetime (an expiring profile's) or make lasting (`persist`)."""
    owners: dict[str, str] = {}
    for write in group:
        pid = write.state.id
        named = [
            (kind, value) for kind, values in write.state.identities.items() for value in values
        ]
        named += write.persist
        if write.erasure is not None:
            named += write.erasure.identities
        owners.update(dict.fromkeys((keys.index(entity, *identity) for identity in named), pid))
    return owners


def _take_foreign(
    layout: SpreadLayout,
    plan: CommitPlan,
    part: BucketCommit,
    owners: dict[str, str],
    pointed: set[str],
) -> None:
    """Move what `plan` writes outside its bucket's slot into the bucket's intent.

    The pointers the write sets (`pointed`) are claimed (`plan_commit`), so their SETs
    are dropped here; an erased profile's pointers are deleted, an expiring profile's
    pointers get their lifetime, if they still point at it; tombstones and an erase
    request's status are set."""
    bucket = part.bucket

    def foreign(key: str) -> bool:
        return layout.bucket_of_key(key) != bucket

    for key in [k for k in plan.sets if foreign(k)]:
        value = plan.sets.pop(key)
        if key not in pointed:
            ttl = plan.expiring.pop(key, None)
            part.forward.append(claims.set_value(key, value, ttl))
    kept: list[str] = []
    for key in plan.deletes:
        if foreign(key):
            part.forward.append(claims.delete_if(key, owners[key]))
        else:
            kept.append(key)
    plan.deletes = kept
    for key in [k for k in plan.expiring if foreign(k)]:
        part.forward.append(claims.expire_if(key, owners[key], plan.expiring.pop(key)))
    for key in [k for k in plan.persisted if foreign(k)]:
        plan.persisted.remove(key)
        part.forward.append(claims.persist_if(key, owners[key]))


def _uncount_elsewhere(layout: SpreadLayout, plan: CommitPlan, part: BucketCommit) -> None:
    """A merged-away profile that was expiring is counted among the expiring members
    of its own bucket's sets: it leaves them there, as an intent step."""
    entity = plan.entity
    for sizes, audiences in ((plan.sizes, True), (plan.counts, False)):
        for name, pids in list(sizes.dropped.items()):
            here = [pid for pid in pids if layout.profile_bucket(entity, pid) == part.bucket]
            for pid in pids:
                if pid not in here:
                    keys = layout.of_profile(entity, pid)
                    key = (
                        keys.expiring_members(entity, name)
                        if audiences
                        else keys.expiring_profiles(entity, name)
                    )
                    part.forward.append(claims.uncount(key, [pid]))
            if here:
                sizes.dropped[name] = here
            else:
                del sizes.dropped[name]


def _remember(
    layout: SpreadLayout,
    plan: CommitPlan,
    part: BucketCommit,
    now: int,
    bucket_ms: int,
    dedupe_window_ms: int,
) -> None:
    """Applied messageIds go to the dedupe set of each one's own bucket (where
    `applied` finds them before the profile is known), as intent steps."""
    time_bucket = now // bucket_ms
    gone_at = (time_bucket + 1) * bucket_ms + dedupe_window_ms
    for source, mids in plan.messages.items():
        by_bucket: dict[int, list[str]] = {}
        for mid in mids:
            by_bucket.setdefault(layout.message_bucket(source, mid), []).append(mid)
        for bucket, ids in sorted(by_bucket.items()):
            key = layout.keys(bucket).messages(plan.entity, source, time_bucket)
            part.forward.append(claims.remember(key, gone_at, ids))
    plan.messages = {}


def bucket_conflict(
    part: BucketCommit, found: Sequence[bytes | None]
) -> Conflict | RulesChanged | None:
    """What a bucket's script found changed (its checks' values, in order), as
    `CommitPlan.conflict` names it; an intent found where none may be (the commit was
    rolled back after its lease ended) names every profile of the bucket."""
    stale = [
        guarded
        for (want, guarded), have in zip(part.checks.values(), found, strict=True)
        if (have or b"") != want
    ]
    if not stale:
        return None
    if rules := [g for g in stale if isinstance(g, RulesAt)]:
        return RulesChanged(rules[0].version)
    if None in stale:
        return Conflict(profiles=part.profiles)
    return Conflict(
        [g for g in stale if isinstance(g, tuple)], [g for g in stale if isinstance(g, str)]
    )
