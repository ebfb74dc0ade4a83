"""`SpreadProfileStore`: the profile store on a Redis Cluster with the spread layout
(docs/redis-cluster.md, option B; `TRAITFLOW_REDIS_LAYOUT=spread`).

Profiles and identities are spread over the cluster's shards (`traitflow.spread_layout`),
so a batch's reads are one pipelined round trip over every node it touches, and its
commit is one single-slot script per touched bucket (`traitflow.spread_plan`), all sent
at once. A commit that links identities, merges profiles, erases one or remembers
messageIds also writes keys of other slots: it claims first and finalizes after
(`traitflow.spread_claims`, `traitflow.spread_protocol`).

The client is redis-py's asyncio `RedisCluster`: its pipeline, without a transaction,
routes each command by its keys and sends every node its share in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from attributes.erasure import identity_digest
from attributes.profile import ProfileState, decode_state
from traitflow.audience_counts import SIZES
from traitflow.redis_client import Redis
from traitflow.redis_store import DEDUPE_BUCKETS, DEDUPE_WINDOW_MS
from traitflow.spread_claims import new_commit_id, plain
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import cluster_client
from traitflow.spread_plan import SpreadCommit, bucket_conflict, plan_commit
from traitflow.spread_protocol import SpreadProtocol
from traitflow.spread_reads import SpreadReads
from traitflow.spread_rounds import NEVER, BucketRounds
from traitflow.spread_rules import raise_copies
from traitflow.store import (
    ERASURE_STATUS_TTL_MS,
    Conflict,
    Expected,
    Identity,
    MessageKey,
    ProfileStore,
    ProfileWrite,
    RulesChanged,
    now_ms,
)

#: per expiry index: {its members due by ARGV[1] (at most ARGV[2], flat with their
#: scores), its earliest score when none is due, else false}
_DUE_BODY = """
  local due = redis.call('ZRANGE', index, '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2],
                         'WITHSCORES')
  local first = false
  if #due == 0 then
    local earliest = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
    if #earliest > 0 then first = earliest[2] end
  end
"""
#: one index, KEYS[1] (a node's script refused: where its slot is)
DUE = "local index = KEYS[1]" + _DUE_BODY + "return {due, first}\n"
#: the indexes of one node, ARGV[3..] (`traitflow.spread_nodes`)
DUE_ON_NODE = (
    "#!lua flags=allow-cross-slot-keys,no-writes\nlocal out = {}\nfor i = 3, #ARGV do\n"
    "  local index = ARGV[i]" + _DUE_BODY + "  out[#out + 1] = {due, first}\nend\nreturn out\n"
)

#: how long a commit's claims hold before another worker may finish or undo them (ms)
CLAIM_LEASE_MS = 10_000
#: the part of the lease a commit must have left to be sent (its claims may be undone
#: once the lease is over)
LEASE_MARGIN = 0.1


class SpreadProfileStore(SpreadReads, ProfileStore):
    def __init__(
        self,
        client: RedisCluster,
        layout: SpreadLayout,
        *,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS,
        clock: Callable[[], int] = now_ms,
        lease_ms: int = CLAIM_LEASE_MS,
    ) -> None:
        self.client = client
        self.layout = layout
        self.dedupe_window_ms = dedupe_window_ms
        self.bucket_ms = max(1, -(-dedupe_window_ms // DEDUPE_BUCKETS))
        self.clock = clock
        self.lease_ms = lease_ms
        self.protocol = SpreadProtocol(client, layout, clock)
        #: which buckets the timer rounds read (`traitflow.spread_rounds`): told by each
        #: commit (committed or not: a superset is harmless) where it wrote messages
        #: (the relay's, `traitflow.spread_outbox`) and expiries (`due`)
        self.outbox_rounds = BucketRounds(layout.buckets)
        self.expiry_rounds = BucketRounds(layout.buckets)

    @classmethod
    def from_url(
        cls,
        url: Redis,
        prefix: str,
        buckets: int,
        *,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS,
        clock: Callable[[], int] = now_ms,
        lease_ms: int = CLAIM_LEASE_MS,
    ) -> SpreadProfileStore:
        """`url`: settings, a target or a URL naming any node of the cluster."""
        return cls(
            cluster_client(url),
            SpreadLayout.of(prefix, buckets),
            dedupe_window_ms=dedupe_window_ms,
            clock=clock,
            lease_ms=lease_ms,
        )

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        return await self.protocol._run(calls)

    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        """A claimed pointer (a commit between its steps) is taken for its old value."""
        keys = self.layout.keys(0)
        found = await self.protocol.get([keys.index(entity, *i) for i in identities])
        return {
            identity: pid.decode()
            for identity, raw in zip(identities, found, strict=True)
            if (pid := plain(raw)) is not None
        }

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        """The states (a locked profile's too: the lock is on its version key, and a
        commit of it is refused by the version check)."""
        keys = self.layout.keys(0)
        raws = await self.protocol.get([keys.state(entity, pid) for pid in ids])
        return {pid: decode_state(raw) for pid, raw in zip(ids, raws, strict=True) if raw}

    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        keys = self.layout.keys(0)
        names = [keys.tombstone(entity, identity_digest(entity, *i)) for i in identities]
        found = await self.protocol.get(names)
        return {i: raw for i, raw in zip(identities, found, strict=True) if raw is not None}

    async def note_erasure(self, request: str, status: bytes) -> None:
        key = self.layout.keys(0).erasure(request)
        await self._run([("SET", key, status, "PX", ERASURE_STATUS_TTL_MS)])

    async def erasure_status(self, request: str) -> bytes | None:
        (found,) = await self._run([("GET", self.layout.keys(0).erasure(request))])
        return cast("bytes | None", found)

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        """One SMISMEMBER per messageId bucket, source and live time bucket, sent as
        one script per node."""
        groups: dict[tuple[int, str], list[str]] = {}
        for source, mid in messages:
            bucket = self.layout.message_bucket(source, mid)
            groups.setdefault((bucket, source), []).append(mid)
        now = self.clock()
        live = range((now - self.dedupe_window_ms) // self.bucket_ms, now // self.bucket_ms + 1)
        asked: list[tuple[str, list[str]]] = []
        calls: list[tuple[Any, ...]] = []
        for (bucket, source), mids in groups.items():
            keys = self.layout.keys(bucket)
            for time_bucket in live:
                calls.append(("SMISMEMBER", keys.messages(entity, source, time_bucket), *mids))
                asked.append((source, mids))
        replies = await self.protocol.many(calls)
        return {
            (source, mid)
            for (source, mids), found in zip(asked, replies, strict=True)
            for mid, member in zip(mids, found, strict=True)
            if member
        }

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        if not writes and not removed:
            return
        now = self.clock()
        spread = plan_commit(
            self.layout,
            entity,
            writes,
            removed=removed,
            expected=expected,
            now=now,
            commit=new_commit_id(),
            deadline=now + self.lease_ms,
            bucket_ms=self.bucket_ms,
            dedupe_window_ms=self.dedupe_window_ms,
        )
        try:
            refused = await self._steps(spread)
        except Conflict:
            raise
        except Exception:  # a lost connection: what committed is not known here
            if spread.crosses_slots:
                await self.protocol.settle_own(spread)
            raise
        finally:
            self._note_rounds(entity, writes, spread)
        if refused:
            await self._refused(spread, refused)

    def _note_rounds(
        self, entity: str, writes: Sequence[ProfileWrite], spread: SpreadCommit
    ) -> None:
        """Tell the timer rounds where the commit wrote messages and expiries."""
        for source in {write.source for write in writes if write.outgoing}:
            for bucket in spread.buckets:  # a bucket without messages: read once
                self.outbox_rounds.note(source, bucket)
        for write in writes:
            if write.expiry is not None and (when := write.expiry[1]) is not None:
                bucket = self.layout.profile_bucket(entity, write.state.id)
                self.expiry_rounds.note(write.expiry[0], bucket, when)

    async def _steps(self, spread: SpreadCommit) -> dict[int, list[bytes | None]]:
        """Claim, commit the buckets, finalize; the values the refused buckets found."""
        protocol = self.protocol
        if spread.claims:
            await protocol.claim(spread)
            if self.clock() > spread.deadline - self.lease_ms * LEASE_MARGIN:
                await protocol.release_claims(spread)
                raise Conflict(profiles=[p for b in spread.buckets.values() for p in b.profiles])
        refused = await protocol.commit_buckets(spread)
        if spread.crosses_slots:
            steps = [*spread.released]
            for bucket, part in spread.buckets.items():
                steps += part.back if bucket in refused else part.forward
            await protocol.finalize(steps)
            committed = [p for b, p in spread.buckets.items() if b not in refused]
            protocol.drop_intents(spread.commit, committed)
        return refused

    async def _refused(self, spread: SpreadCommit, refused: dict[int, list[bytes | None]]) -> None:
        """Raise what the refused buckets found changed (after recovering the locks of
        dead commits among it, so that the batch computed again can commit), naming
        the profiles the other buckets committed (`committed_profiles`)."""
        pointers: set[Identity] = set()
        profiles: set[str] = set()
        rules: RulesChanged | None = None
        for bucket, found in refused.items():
            part = spread.buckets[bucket]
            await self.protocol.recover_all(zip(part.checks, found, strict=True))
            conflict = bucket_conflict(part, found)
            if isinstance(conflict, RulesChanged):
                rules = rules or conflict
            elif conflict is not None:
                pointers |= conflict.pointers
                profiles |= conflict.profiles
        committed = committed_profiles(spread, refused)
        if rules is not None:
            raise RulesChanged(rules.computed_with, committed)
        raise Conflict(pointers, profiles, committed)

    async def raise_rules(self, version: int) -> None:
        """Every bucket's copy of the rules version to at least `version`, before this
        process commits at it (`traitflow.spread_rules`); raises if a node does not
        answer."""
        await raise_copies(self.protocol, self.layout, version)

    async def recover(self) -> int:
        """Finish the commits a dead worker left committed and not finalized."""
        return await self.protocol.recover_intents()

    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        """The earliest due of the expiry indexes of the buckets worth reading
        (`expiry_rounds`), at most `limit`, and when each is next worth reading: one
        script per node (`DUE_ON_NODE`)."""
        buckets, began = self.expiry_rounds.to_read(source, now)
        calls = [
            ("EVAL", DUE, 1, self.layout.keys(b).expiries(entity, source), now, limit)
            for b in buckets
        ]
        replies = await self.protocol.by_node(
            calls, DUE_ON_NODE, lambda c: [c[3]], lambda c: str(c[3]), head=[now, limit]
        )
        scored: list[tuple[float, str]] = []
        nexts: dict[int, float] = {}
        for bucket, (due, first) in zip(buckets, replies, strict=True):
            scored += ((float(score), pid.decode()) for pid, score in _pairs(due))
            # with some due, it is read again once they are written; else at its earliest
            nexts[bucket] = now if due else NEVER if first is None else float(first)
        self.expiry_rounds.found(source, nexts, began)
        return [pid for _, pid in sorted(scored)[:limit]]

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        by_bucket: dict[int, list[str]] = {}
        for pid in ids:
            by_bucket.setdefault(self.layout.profile_bucket(entity, pid), []).append(pid)
        await self._run(
            [
                ("ZREM", self.layout.keys(b).expiries(entity, source), *p)
                for b, p in by_bucket.items()
            ]
        )

    async def audience_sizes(self, entity: str) -> dict[str, int]:
        """Every bucket's sizes, summed (`traitflow.audience_counts.read_sizes`)."""
        return await self._sizes(
            lambda k: (k.audience_sizes(entity), k.expiring_audiences(entity)),
            lambda k: k.expiring_members(entity, ""),
        )

    async def profile_counts(self, entity: str) -> dict[str, int]:
        return await self._sizes(
            lambda k: (k.profile_counts(entity), k.expiring_categories(entity)),
            lambda k: k.expiring_profiles(entity, ""),
        )

    async def _sizes(self, named: Callable[[Any], tuple[str, str]], members: Any) -> dict[str, int]:
        now = self.clock()
        calls = []
        for bucket in range(self.layout.buckets):
            keys = self.layout.keys(bucket)
            kept, names = named(keys)
            calls.append(("EVAL", SIZES.source, 2, kept, names, members(keys), f"({now}"))
        sizes: dict[str, int] = {}
        for reply in await self._run(calls):
            pairs = reply or []
            for name, size in zip(pairs[::2], pairs[1::2], strict=True):
                sizes[name.decode()] = sizes.get(name.decode(), 0) + int(size)
        return sizes

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.protocol.settle()
        await self.client.aclose()


def committed_profiles(spread: SpreadCommit, refused: Collection[int]) -> set[str]:
    """The profiles `spread` wrote in the buckets not `refused`, and those it merged
    away whose lock such a bucket owns (its intent deletes them): what committed."""
    written = spread.buckets.items()
    committed = {p for b, part in written if b not in refused for p in part.profiles}
    locked = [c for c in spread.claims if c.lock and c.owner is not None]
    committed |= {str(c.guarded) for c in locked if c.owner not in refused}
    return committed


def _pairs(reply: Any) -> list[tuple[bytes, Any]]:
    """(member, score) of a ZRANGE WITHSCORES reply, as pairs or flat (RESP2)."""
    if reply and isinstance(reply[0], (list, tuple)):
        return [(m, s) for m, s in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))
