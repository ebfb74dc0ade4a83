"""Merge policies made through the API, and where they are kept.

Configured policies (`TRAITFLOW_MERGE_POLICIES`) are fixed for a process's life; the
API can add more (`api.merge_policies`), which every API process must then know. They
are kept in Redis (one hash, `KeyLayout.merge_policies`), and each process caches the
whole set for `cache_ttl_s`: a read naming a policy the configuration does not have
costs no round trip while the cache is fresh, and a new, changed or deleted policy
reaches every process within that time (at once in the process that made the change).

Only reads choose among them. The default policy, whose merge the workers
materialise, stays a configured one: making another the default would mean
re-rendering every stored profile.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from attributes.policies import MergePolicy
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import Redis, resp_client
from traitflow.resp import RespClient


class PolicyStore(ABC):
    """The API-made policies by id; reads are cached for `cache_ttl_s`."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cached: tuple[float, dict[str, MergePolicy]] | None = None
        #: changes made through this store: a read that one overtook is not cached
        self._changes = 0

    @abstractmethod
    async def _load(self) -> dict[str, MergePolicy]:
        """Every stored policy, read now."""

    @abstractmethod
    async def _create(self, policy_id: str, policy: MergePolicy) -> bool:
        """Store a policy unless the id is taken; whether it was stored."""

    @abstractmethod
    async def _replace(self, policy_id: str, policy: MergePolicy) -> bool:
        """Store a policy, replacing any; whether it replaced one."""

    @abstractmethod
    async def _remove(self, policy_id: str) -> bool:
        """Delete a policy; whether there was one."""

    async def all(self) -> dict[str, MergePolicy]:
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.cache_ttl_s:
            return self._cached[1]
        changes = self._changes
        loaded = await self._load()
        if changes == self._changes:  # else it may predate a change made meanwhile
            self._cached = (now, loaded)
        return loaded

    async def get(self, policy_id: str) -> MergePolicy | None:
        return (await self.all()).get(policy_id)

    async def create(self, policy_id: str, policy: MergePolicy) -> bool:
        with self._changing():
            return await self._create(policy_id, policy)

    async def replace(self, policy_id: str, policy: MergePolicy) -> bool:
        with self._changing():
            return await self._replace(policy_id, policy)

    async def remove(self, policy_id: str) -> bool:
        with self._changing():
            return await self._remove(policy_id)

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a write: the cache goes, and a read in flight across the write
        (started before it ended) does not put the old set back."""
        self._changes += 1
        self._cached = None
        try:
            yield
        finally:
            self._changes += 1
            self._cached = None

    async def close(self) -> None:  # noqa: B027 - optional hook, the memory store holds nothing
        pass


class MemoryPolicyStore(PolicyStore):
    """A dict, for tests of the API without Redis."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cache_ttl_s, clock)
        self.policies: dict[str, MergePolicy] = {}

    async def _load(self) -> dict[str, MergePolicy]:
        return dict(self.policies)

    async def _create(self, policy_id: str, policy: MergePolicy) -> bool:
        if policy_id in self.policies:
            return False
        self.policies[policy_id] = policy
        return True

    async def _replace(self, policy_id: str, policy: MergePolicy) -> bool:
        replaced = policy_id in self.policies
        self.policies[policy_id] = policy
        return replaced

    async def _remove(self, policy_id: str) -> bool:
        return self.policies.pop(policy_id, None) is not None


class RedisPolicyStore(PolicyStore):
    """One hash: policy id -> the policy as JSON. Read and written through the API's
    lean Redis client (`traitflow.resp`): reads that name a policy run these commands,
    so they fail as the record reads do (a typed error, or within its timeout)."""

    def __init__(self, reads: RespClient, keys: KeyLayout, cache_ttl_s: float = 2.0) -> None:
        super().__init__(cache_ttl_s)
        self.reads = reads
        self.key = keys.merge_policies()

    @classmethod
    def from_url(
        cls, url: Redis, prefix: str, cache_ttl_s: float = 2.0, reads: RespClient | None = None
    ) -> RedisPolicyStore:
        """`url`: settings, or a URL alone; `reads`: a lean connection to share
        (closing the store closes it)."""
        return cls(reads or resp_client(url), KeyLayout(prefix), cache_ttl_s)

    async def _load(self) -> dict[str, MergePolicy]:
        flat = cast("list[bytes]", await self.reads.call("HGETALL", self.key))
        stored = dict(zip(flat[::2], flat[1::2], strict=True))
        return {
            policy_id.decode(): MergePolicy.model_validate_json(raw)
            for policy_id, raw in sorted(stored.items())
        }

    async def _create(self, policy_id: str, policy: MergePolicy) -> bool:
        return bool(await self.reads.call("HSETNX", self.key, policy_id, policy.model_dump_json()))

    async def _replace(self, policy_id: str, policy: MergePolicy) -> bool:
        added = await self.reads.call("HSET", self.key, policy_id, policy.model_dump_json())
        return not added

    async def _remove(self, policy_id: str) -> bool:
        return bool(await self.reads.call("HDEL", self.key, policy_id))

    async def close(self) -> None:
        await self.reads.close()
