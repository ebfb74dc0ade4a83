"""Profile storage: the Redis key layout (defined here and nowhere else) and the store.

Both the worker (writes) and the API (reads) go through `ProfileStore`. There are two
implementations: `RedisProfileStore`, the real one, and `MemoryProfileStore`, which
lets the processing logic be tested without I/O.

Redis layout, for prefix `tf` and entity `user`:

    tf:p:user:{id}                 hash  s = state (msgpack), v = served view (JSON)
    tf:i:user:{index}:{value}      string -> profile id (one per identity)

A profile's state, view and its new index keys are written in one MULTI/EXEC, so a
reader never sees a view without its index, and the offset watermark inside the
state is never ahead of or behind the state it guards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from attributes.profile import ProfileState, decode_state, encode_state

PRIMARY_INDEX = "id"
"""The index name that addresses a profile by its own id, without an index lookup."""


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str = "tf"

    def profile(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:p:{entity}:{profile_id}"

    def profile_prefix(self, entity: str) -> str:
        return f"{self.prefix}:p:{entity}:"

    def index(self, entity: str, index: str, value: str) -> str:
        return f"{self.prefix}:i:{entity}:{index}:{value}"


@dataclass(slots=True)
class ProfileWrite:
    state: ProfileState
    view: bytes
    #: (index, value) pairs that are new for this profile and must point at it
    new_identities: list[tuple[str, str]] = field(default_factory=list)


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

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        pass


class MemoryProfileStore(ProfileStore):
    """A dict-backed store with the same semantics, for tests of pure logic."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], bytes] = {}
        self.views: dict[tuple[str, str], bytes] = {}
        self.index: dict[tuple[str, str, str], str] = {}

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        return {
            pid: decode_state(self.states[(entity, pid)])
            for pid in ids
            if (entity, pid) in self.states
        }

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        for write in writes:
            key = (entity, write.state.id)
            self.states[key] = encode_state(write.state)
            self.views[key] = write.view
            for index, value in write.new_identities:
                self.index[(entity, index, value)] = write.state.id

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        pid = value if index == PRIMARY_INDEX else self.index.get((entity, index, value))
        return None if pid is None else self.views.get((entity, pid))


# One round trip per read: resolve the index and fetch the view inside Redis.
_READ_BY_INDEX = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('HGET', ARGV[1] .. id, 'v')
"""


class RedisProfileStore(ProfileStore):
    def __init__(self, client: aioredis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys
        self._read_by_index = client.register_script(_READ_BY_INDEX)

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisProfileStore:
        return cls(aioredis.Redis.from_url(url), KeyLayout(prefix))

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        if not ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for pid in ids:
                pipe.hget(self.keys.profile(entity, pid), "s")
            raws = await pipe.execute()
        return {
            pid: decode_state(raw) for pid, raw in zip(ids, raws, strict=True) if raw is not None
        }

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        if not writes:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for write in writes:
                pid = write.state.id
                pipe.hset(
                    self.keys.profile(entity, pid),
                    mapping={"s": encode_state(write.state), "v": write.view},
                )
                for index, value in write.new_identities:
                    pipe.set(self.keys.index(entity, index, value), pid)
            await pipe.execute()

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        raw: bytes | str | None
        if index == PRIMARY_INDEX:
            raw = await self.client.hget(self.keys.profile(entity, value), "v")
        else:
            raw = await self._read_by_index(
                keys=[self.keys.index(entity, index, value)],
                args=[self.keys.profile_prefix(entity)],
            )
        return raw.encode() if isinstance(raw, str) else raw

    async def close(self) -> None:
        await self.client.aclose()
