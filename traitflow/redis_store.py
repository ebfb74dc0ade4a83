"""`RedisProfileStore`: the profile store on Redis, with the key layout of
`traitflow.key_layout.KeyLayout`.

The worker's lookups, loads and commits go through redis-py; the API's reads through
the leaner `traitflow.resp` connection. A commit is Redis's optimistic transaction:
one Lua script (`traitflow.commit_script`) that checks the keys it must find
unchanged and, only if they are, makes every write: one round trip, and nothing runs
between the check and the writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import redis.asyncio as aioredis

from attributes.erasure import identity_digest
from attributes.profile import ProfileState, decode_state
from traitflow.audience_counts import read_sizes
from traitflow.commit_plan import CommitPlan
from traitflow.commit_script import COMMIT, CommandList, found_values, script_arguments
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import Redis, RedisTarget, async_client, resp_client
from traitflow.redis_packing import HiredisPackedConnection
from traitflow.resp import RespClient, Script
from traitflow.store import (
    ERASURE_STATUS_TTL_MS,
    PRIMARY_INDEX,
    Expected,
    Found,
    Identity,
    MessageKey,
    ProfileStore,
    ProfileWrite,
    now_ms,
)

#: how long an applied messageId is remembered, unless set (Settings.dedupe_window_s)
DEDUPE_WINDOW_MS = 7 * 86_400_000
#: time buckets per dedupe window: a lookup asks this many sets (plus the current one)
DEDUPE_BUCKETS = 7


# One round trip per read: resolve the index and fetch the view inside Redis.
_READ_BY_INDEX = Script.of("""
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
""")

# One round trip per batch of reads (`_lookup_keys`). ARGV[1] is the prefix of view
# keys; KEYS[i] is an index key to resolve when ARGV[i + 1] is '', else the view key of
# the profile ARGV[i + 1] names. A missing view is `false` in the reply (a nil
# element), so the reply has one element per key.
_READ_MANY = Script.of("""
local views = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 1]
  if id == '' then id = redis.call('GET', key) end
  views[i] = id and redis.call('GET', ARGV[1] .. id)
end
return views
""")


# (view, state) per lookup, in one round trip: as _READ_MANY, with ARGV[2] the prefix
# of state keys and the ids from ARGV[3] on. A missing profile is `false`.
_READ_PROFILES = Script.of("""
local found = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 2]
  if id == '' then id = redis.call('GET', key) end
  local pair = false
  if id then
    local view = redis.call('GET', ARGV[1] .. id)
    if view then pair = {view, redis.call('GET', ARGV[2] .. id)} end
  end
  found[i] = pair
end
return found
""")


# A mapped collection's records, in one round trip: as _READ_MANY, with ARGV[2] the
# prefix of its record keys, ARGV[3] that of version keys, ARGV[4] the mapping's stamp
# and the ids from ARGV[5] on. A record document is served (a string in the reply)
# when it was written under this mapping for the profile's current version
# (`store.record_value`); else the view is, inside a one-element array, to be mapped.
_READ_RECORDS = Script.of("""
local found = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 4]
  if id == '' then id = redis.call('GET', key) end
  local answer = false
  if id then
    local record = redis.call('GET', ARGV[2] .. id)
    if record then
      local want = ARGV[4] .. ':' .. (redis.call('GET', ARGV[3] .. id) or '') .. ':'
      if string.sub(record, 1, #want) == want then answer = string.sub(record, #want + 1) end
    end
    if not answer then
      local view = redis.call('GET', ARGV[1] .. id)
      if view then answer = {view} end
    end
  end
  found[i] = answer
end
return found
""")


class RedisProfileStore(ProfileStore):
    """Writes and batch loads through redis-py (`client`); the API's reads through the
    leaner `reads` connection (`traitflow.resp`: a read is little besides its round
    trip, and redis-py's per-command cost was most of it). A process that never reads
    views, like the worker, never opens that connection."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeyLayout,
        reads: RespClient,
        *,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.client = client
        self.keys = keys
        self.reads = reads
        #: how long an applied messageId is remembered at least (at most a bucket more)
        self.dedupe_window_ms = dedupe_window_ms
        #: applied messageIds are kept in sets of one bucket of processing time each:
        #: an id costs a set member, not a key, and a whole bucket expires at once
        self.bucket_ms = max(1, -(-dedupe_window_ms // DEDUPE_BUCKETS))
        self.clock = clock
        self._commit = client.register_script(COMMIT)

    @classmethod
    def from_url(
        cls,
        url: Redis,
        prefix: str,
        reads: RespClient | None = None,
        *,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS,
        clock: Callable[[], int] = now_ms,
    ) -> RedisProfileStore:
        """`url`: settings, or a URL alone (`traitflow.redis_client`); `reads`: a
        lean connection to share (closing the store closes it)."""
        target = RedisTarget.of(url)
        if target.url.startswith("redis://"):  # TLS and unix sockets keep their own classes
            client = async_client(
                target, decode_responses=False, connection_class=HiredisPackedConnection
            )
        else:
            client = async_client(target, decode_responses=False)
        return cls(
            client,
            KeyLayout(prefix),
            reads or resp_client(target),
            dedupe_window_ms=dedupe_window_ms,
            clock=clock,
        )

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        """The states, read with their version keys (one MGET). A state stored before
        version keys existed has none: its key is set from the state (NX, so a
        concurrent commit's own is kept), or every commit would find it changed."""
        if not ids:
            return {}
        keys = self.keys
        names = [
            name for pid in ids for name in (keys.state(entity, pid), keys.version(entity, pid))
        ]
        # our client never decodes responses (from_url): values are the stored bytes
        raws = cast("list[bytes | None]", await self.client.mget(names))
        states: dict[str, ProfileState] = {}
        unversioned: list[ProfileState] = []
        for pid, raw, version in zip(ids, raws[::2], raws[1::2], strict=True):
            if raw is not None:
                states[pid] = state = decode_state(raw)
                if version is None:
                    unversioned.append(state)
        if unversioned:
            async with self.client.pipeline(transaction=False) as pipe:
                for state in unversioned:
                    pipe.set(keys.version(entity, state.id), str(state.version), nx=True)
                await pipe.execute()
        return states

    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        if not identities:
            return {}
        keys = [self.keys.index(entity, index, value) for index, value in identities]
        pids = cast("list[bytes | None]", await self.client.mget(keys))
        return {
            identity: pid.decode()
            for identity, pid in zip(identities, pids, strict=True)
            if pid is not None
        }

    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        if not identities:
            return {}
        names = [self.keys.tombstone(entity, identity_digest(entity, *i)) for i in identities]
        found = cast("list[bytes | None]", await self.client.mget(names))
        return {i: raw for i, raw in zip(identities, found, strict=True) if raw is not None}

    async def note_erasure(self, request: str, status: bytes) -> None:
        await self.client.set(self.keys.erasure(request), status, px=ERASURE_STATUS_TTL_MS)

    async def erasure_status(self, request: str) -> bytes | None:
        return cast("bytes | None", await self.client.get(self.keys.erasure(request)))

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        """One SMISMEMBER per source and live time bucket (eight), in one round trip."""
        if not messages:
            return set()
        by_source: dict[str, list[str]] = {}
        for source, mid in messages:
            by_source.setdefault(source, []).append(mid)
        now = self.clock()
        asked: list[tuple[str, list[str]]] = []
        async with self.client.pipeline(transaction=False) as pipe:
            for source, mids in by_source.items():
                for bucket in self._live_buckets(now):
                    pipe.smismember(self.keys.messages(entity, source, bucket), mids)
                    asked.append((source, mids))
            replies = cast("list[list[int]]", await pipe.execute())
        return {
            (source, mid)
            for (source, mids), found in zip(asked, replies, strict=True)
            for mid, member in zip(mids, found, strict=True)
            if member
        }

    def _live_buckets(self, now: int) -> range:
        """The time buckets that hold messageIds applied within the window of `now`."""
        size = self.bucket_ms
        return range((now - self.dedupe_window_ms) // size, now // size + 1)

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
        plan = CommitPlan.of(
            self.keys, entity, writes, removed=removed, expected=expected, now=self.clock()
        )
        commands = CommandList()
        plan.queue(commands, bucket_ms=self.bucket_ms, dedupe_window_ms=self.dedupe_window_ms)
        checks = {key: want for key, (want, _) in plan.checks.items()}
        keys, args = script_arguments(checks, commands)
        found = found_values(await self._commit(keys=keys, args=args))
        if found is not None:
            conflict = plan.conflict(found)
            assert conflict is not None, "the script refused a commit whose checks hold"
            raise conflict

    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        ids = cast(
            "list[bytes]",
            await self.client.zrange(
                self.keys.expiries(entity, source), "-inf", now, byscore=True, offset=0, num=limit
            ),
        )
        return [pid.decode() for pid in ids]

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        await self.client.zrem(self.keys.expiries(entity, source), *ids)

    async def audience_sizes(self, entity: str) -> dict[str, int]:
        """One script on the reads' connection (the API asks): the kept counts, plus
        each audience's expiring members whose deadline is still ahead."""
        keys = self.keys
        expiring = (keys.expiring_audiences(entity), keys.expiring_members(entity, ""))
        return await read_sizes(self.reads, keys.audience_sizes(entity), expiring, self.clock())

    async def profile_counts(self, entity: str) -> dict[str, int]:
        """As `audience_sizes`, for the counted categories (`traitflow.profile_counts`)."""
        keys = self.keys
        expiring = (keys.expiring_categories(entity), keys.expiring_profiles(entity, ""))
        return await read_sizes(self.reads, keys.profile_counts(entity), expiring, self.clock())

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

    def _lookup_keys(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> tuple[list[str], list[str]]:
        """KEYS and ids for the batch read scripts: a lookup by id is the profile's view
        key and its id; one by another index is the index key and '' (resolve it)."""
        keys: list[str] = []
        ids: list[str] = []
        for index, value in lookups:
            if index == PRIMARY_INDEX:
                keys.append(self.keys.view(entity, value))
                ids.append(value)
            else:
                keys.append(self.keys.index(entity, index, value))
                ids.append("")
        return keys, ids

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        if not lookups:
            return []
        keys, ids = self._lookup_keys(entity, lookups)
        args = [self.keys.view_prefix(entity), *ids]
        return cast("list[bytes | None]", await self.reads.eval(_READ_MANY, keys, args))

    async def read_records(
        self, entity: str, lookups: Sequence[tuple[str, str]], *, collection: str, stamp: str
    ) -> list[Found | None]:
        if not lookups:
            return []
        keys, ids = self._lookup_keys(entity, lookups)
        layout = self.keys
        args = [
            layout.view_prefix(entity),
            layout.record_prefix(entity, collection),
            layout.version(entity, ""),
            stamp,
            *ids,
        ]
        replies = cast(
            "list[bytes | list[bytes] | None]", await self.reads.eval(_READ_RECORDS, keys, args)
        )
        return [
            None
            if reply is None
            else (True, reply)
            if isinstance(reply, bytes)
            else (False, reply[0])
            for reply in replies
        ]

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        if not lookups:
            return []
        keys, ids = self._lookup_keys(entity, lookups)
        args = [self.keys.view_prefix(entity), self.keys.state_prefix(entity), *ids]
        replies = cast(
            "list[list[bytes] | None]", await self.reads.eval(_READ_PROFILES, keys, args)
        )
        return [None if reply is None else (reply[0], reply[1]) for reply in replies]

    async def ping(self) -> None:
        """Raise unless Redis answers on the connection that reads use (readiness)."""
        await self.reads.call("PING")

    async def close(self) -> None:
        await self.client.aclose()
        await self.reads.close()
