"""Profile storage: the Redis key layout (defined here and nowhere else) and the store.

Both the worker (writes) and the API (reads) go through `ProfileStore`. There are two
implementations: `RedisProfileStore`, the real one, and `MemoryProfileStore`, which
lets the processing logic be tested without I/O.

Redis layout, for prefix `tf` and entity `user`:

    tf:s:user:{id}                 string  profile state (msgpack)
    tf:v:user:{id}                 string  served view (JSON bytes)
    tf:i:user:{index}:{value}      string  -> profile id (one per identity)
    tf:x:user:{topic}/{partition}  zset    profile id, scored by when its windows next
                                           change (epoch ms); one per input partition
    tf:k:{key_id}                  string  API key record (JSON: name, scopes, sha256 of
                                           its secret; never the secret)
    tf:ks                          set     ids of the API keys (for `traitflow keys list`)
    tf:r:{key_id}                  hash    the API key's rate-limit token bucket

A batch costs two round trips whatever its size: one MGET loads every state, one MSET
writes every state, view and index key (wrapped in MULTI/EXEC with the ZADDs of the
expiry index when the rules have windows). The write is atomic: a reader never sees
a view without its index, and the offset watermark inside a state is never ahead of
or behind the state it guards. The expiry index is per input partition so that the
partition's owner, the profile's only writer, is the one that re-renders it; finding
the due profiles is one ZRANGE, whatever the number of silent profiles. (With Redis
Cluster, keys would need a hash tag per batch; not supported yet.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from attributes.profile import ProfileState, decode_state
from traitflow.resp import RespClient, Script

PRIMARY_INDEX = "id"
"""The index name that addresses a profile by its own id, without an index lookup."""


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str = "tf"

    def state(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:s:{entity}:{profile_id}"

    def view(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:v:{entity}:{profile_id}"

    def view_prefix(self, entity: str) -> str:
        return f"{self.prefix}:v:{entity}:"

    def all_keys(self) -> str:
        """A SCAN pattern for every key under this prefix."""
        return f"{self.prefix}:*"

    def index(self, entity: str, index: str, value: str) -> str:
        return f"{self.prefix}:i:{entity}:{index}:{value}"

    def expiries(self, entity: str, source: str) -> str:
        """`source` is the input partition, "topic/partition"."""
        return f"{self.prefix}:x:{entity}:{source}"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:k:{key_id}"

    def api_key_ids(self) -> str:
        return f"{self.prefix}:ks"

    def rate_bucket(self, key_id: str) -> str:
        return f"{self.prefix}:r:{key_id}"


@dataclass(slots=True)
class ProfileWrite:
    state: ProfileState
    #: `state` encoded, by the caller, so that an unencodable state fails per profile
    encoded_state: bytes
    view: bytes
    #: (index, value) pairs that must point at this profile after the write
    identities: list[tuple[str, str]] = field(default_factory=list)
    #: (input partition, when the profile's windows next change or None): its entry in
    #: that partition's expiry index; None when the rules have no windows
    expiry: tuple[str, int | None] | None = None


class ProfileStore(ABC):
    @abstractmethod
    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        """States of the profiles that exist among `ids`."""

    @abstractmethod
    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        """Write states, views and index keys atomically."""

    @abstractmethod
    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        """The served view of the profile that `index`=`value` points to, or None."""

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        """`read_view` for each (index, value) of `lookups`, in their order.

        This default makes one call per lookup; the stores below answer a batch in one
        go (Redis: one round trip)."""
        return [await self.read_view(entity, index, value) for index, value in lookups]

    @abstractmethod
    async def due(self, entity: str, source: str, now: int, limit: int) -> list[str]:
        """Up to `limit` profiles in `source`'s expiry index due at or before `now`."""

    @abstractmethod
    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        """Remove profiles from `source`'s expiry index."""

    def abandon(self, entity: str, ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """States loaded for `ids` were modified and will not be saved: forget any copy."""

    async def ping(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Raise unless the store's backend answers (readiness); nothing to ask in memory."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        pass


class MemoryProfileStore(ProfileStore):
    """A dict-backed store with the same semantics, for tests of pure logic."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], bytes] = {}
        self.views: dict[tuple[str, str], bytes] = {}
        self.index: dict[tuple[str, str, str], str] = {}
        self.expiries: dict[tuple[str, str], dict[str, int]] = {}

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        return {
            pid: decode_state(self.states[(entity, pid)])
            for pid in ids
            if (entity, pid) in self.states
        }

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        for write in writes:
            key = (entity, write.state.id)
            self.states[key] = write.encoded_state
            self.views[key] = write.view
            for index, value in write.identities:
                self.index[(entity, index, value)] = write.state.id
            if write.expiry is not None:
                source, when = write.expiry
                scheduled = self.expiries.setdefault((entity, source), {})
                if when is None:
                    scheduled.pop(write.state.id, None)
                else:
                    scheduled[write.state.id] = when

    async def due(self, entity: str, source: str, now: int, limit: int) -> list[str]:
        scheduled = self.expiries.get((entity, source), {})
        ordered = sorted((when, pid) for pid, when in scheduled.items() if when <= now)
        return [pid for _, pid in ordered[:limit]]

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        scheduled = self.expiries.get((entity, source), {})
        for pid in ids:
            scheduled.pop(pid, None)

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        pid = value if index == PRIMARY_INDEX else self.index.get((entity, index, value))
        return None if pid is None else self.views.get((entity, pid))

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        return [await self.read_view(entity, index, value) for index, value in lookups]


# One round trip per read: resolve the index and fetch the view inside Redis.
_READ_BY_INDEX = Script.of("""
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
""")

# One round trip per batch of reads. KEYS[i] is a view key when ARGV[i + 1] is "v",
# else an index key resolved to the view under the prefix ARGV[1]. A missing view is
# `false` in the reply (a nil element), so the reply has one element per key.
_READ_MANY = Script.of("""
local views = {}
for i, key in ipairs(KEYS) do
  local view = false
  if ARGV[i + 1] == 'v' then
    view = redis.call('GET', key)
  else
    local id = redis.call('GET', key)
    if id then view = redis.call('GET', ARGV[1] .. id) end
  end
  views[i] = view
end
return views
""")


class RedisProfileStore(ProfileStore):
    """Writes and batch loads through redis-py (`client`); the API's reads through the
    leaner `reads` connection (`traitflow.resp`: a read is little besides its round
    trip, and redis-py's per-command cost was most of it). A process that never reads
    views, like the worker, never opens that connection."""

    def __init__(self, client: aioredis.Redis, keys: KeyLayout, reads: RespClient) -> None:
        self.client = client
        self.keys = keys
        self.reads = reads

    @classmethod
    def from_url(cls, url: str, prefix: str, reads: RespClient | None = None) -> RedisProfileStore:
        """`reads`: a lean connection to share (closing the store closes it)."""
        client = aioredis.Redis.from_url(url, decode_responses=False)
        return cls(client, KeyLayout(prefix), reads or RespClient.from_url(url))

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        if not ids:
            return {}
        # our client never decodes responses (from_url): values are the stored bytes
        raws = cast(
            "list[bytes | None]",
            await self.client.mget([self.keys.state(entity, pid) for pid in ids]),
        )
        return {
            pid: decode_state(raw) for pid, raw in zip(ids, raws, strict=True) if raw is not None
        }

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        if not writes:
            return
        keys = self.keys
        values: dict[str, bytes | str] = {}
        scheduled: dict[str, dict[str, int]] = {}
        unscheduled: dict[str, list[str]] = {}
        for write in writes:
            pid = write.state.id
            values[keys.state(entity, pid)] = write.encoded_state
            values[keys.view(entity, pid)] = write.view
            for index, value in write.identities:
                values[keys.index(entity, index, value)] = pid
            if write.expiry is not None:
                source, when = write.expiry
                if when is None:
                    unscheduled.setdefault(keys.expiries(entity, source), []).append(pid)
                else:
                    scheduled.setdefault(keys.expiries(entity, source), {})[pid] = when
        if not scheduled and not unscheduled:
            await self.client.mset(values)
            return
        async with self.client.pipeline(transaction=True) as transaction:
            transaction.mset(values)
            for key, members in scheduled.items():
                transaction.zadd(key, members)
            for key, pids in unscheduled.items():
                transaction.zrem(key, *pids)
            await transaction.execute()

    async def due(self, entity: str, source: str, now: int, limit: int) -> list[str]:
        ids = cast(
            "list[bytes]",
            await self.client.zrange(
                self.keys.expiries(entity, source), "-inf", now, byscore=True, offset=0, num=limit
            ),
        )
        return [pid.decode() for pid in ids]

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        await self.client.zrem(self.keys.expiries(entity, source), *ids)

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        if index == PRIMARY_INDEX:
            return cast("bytes | None", await self.reads.call("GET", self.keys.view(entity, value)))
        return cast(
            "bytes | None",
            await self.reads.eval(
                _READ_BY_INDEX,
                [self.keys.index(entity, index, value)],
                [self.keys.view_prefix(entity)],
            ),
        )

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        if not lookups:
            return []
        keys: list[str] = []
        kinds: list[str] = [self.keys.view_prefix(entity)]
        for index, value in lookups:
            if index == PRIMARY_INDEX:
                keys.append(self.keys.view(entity, value))
                kinds.append("v")
            else:
                keys.append(self.keys.index(entity, index, value))
                kinds.append("i")
        return cast("list[bytes | None]", await self.reads.eval(_READ_MANY, keys, kinds))

    async def ping(self) -> None:
        """Raise unless Redis answers on the connection that reads use (readiness)."""
        await self.reads.call("PING")

    async def close(self) -> None:
        await self.client.aclose()
        await self.reads.close()


class CachedProfileStore(ProfileStore):
    """Keeps the decoded states this worker wrote, in front of another store.

    Valid because a profile has exactly one writer: the owner of its partition. Loads
    of cached profiles cost neither a round trip nor a decode. The cache must be
    cleared when partitions move (`clear()` on every rebalance), and entries of a
    failed write are dropped: `apply_event` mutates cached states in place, so a
    state whose write failed is ahead of the store, and a retried batch would find
    its offsets already applied and never write them.
    """

    def __init__(self, inner: ProfileStore, max_profiles: int) -> None:
        self.inner = inner
        self.max_profiles = max_profiles
        self._states: OrderedDict[tuple[str, str], ProfileState] = OrderedDict()

    def clear(self) -> None:
        self._states.clear()

    def abandon(self, entity: str, ids: Sequence[str]) -> None:
        for pid in ids:
            self._states.pop((entity, pid), None)

    def __len__(self) -> int:
        return len(self._states)

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        found: dict[str, ProfileState] = {}
        missing: list[str] = []
        for pid in ids:
            state = self._states.get((entity, pid))
            if state is None:
                missing.append(pid)
            else:
                self._states.move_to_end((entity, pid))
                found[pid] = state
        if missing:
            found.update(await self.inner.load(entity, missing))
        return found

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        try:
            await self.inner.save(entity, writes)
        except BaseException:
            self.abandon(entity, [write.state.id for write in writes])
            raise
        for write in writes:
            self._states[(entity, write.state.id)] = write.state
            self._states.move_to_end((entity, write.state.id))
        while len(self._states) > self.max_profiles:
            self._states.popitem(last=False)

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        return await self.inner.read_view(entity, index, value)

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        return await self.inner.read_views(entity, lookups)

    async def due(self, entity: str, source: str, now: int, limit: int) -> list[str]:
        return await self.inner.due(entity, source, now, limit)

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        await self.inner.unschedule(entity, source, ids)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
