"""API keys: what a key is, how it is checked, and where keys are kept.

A key is `tf_<key_id>_<secret>`: the id (12 hex digits) says which record to look up,
so checking a key is one lookup, not a scan; the secret (32 random bytes, base64url)
is never stored, only its SHA-256 (a secret this random needs no slow, salted hash:
there is nothing to guess from the digest), and is compared with
`hmac.compare_digest` so the time taken says nothing about how much of it matched.
The fixed `tf_` lets secret scanners recognise a leaked key.

`KeyStore` keeps the records (Redis in production, memory in unit tests), answers the
rate-limit question for a key, and caches the records it read for `cache_ttl_s`: the
read path then costs one round trip (the rate-limit script), and a revoke takes effect
in every API process within that time (at once in the process that revoked).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from pydantic import TypeAdapter

from api import ratelimit
from api.key_layout import ApiKeyLayout
from attributes.errors import InputError
from traitflow.redis_client import Redis, async_client, resp_client
from traitflow.resp import TIMEOUT_S, RespClient, Script

TOKEN_PREFIX = "tf"
KEY_ID = re.compile(r"[0-9a-f]{12}")
_TOKEN = re.compile(r"tf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.@:/-]{0,99}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's record: everything but its secret. `rate_per_s`/`burst` None = the
    API's defaults (settings), so changing those changes every key without its own."""

    key_id: str
    name: str
    secret_hash: str
    admin: bool = False
    collections: frozenset[str] = frozenset()
    destinations: frozenset[str] = frozenset()
    rate_per_s: float | None = None
    burst: int | None = None
    created_at: float = 0.0

    def verifies(self, secret: str) -> bool:
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)

    def scopes(self) -> str:
        """The scopes, for people: "admin" or e.g. "collections users; destinations d1"."""
        if self.admin:
            return "admin"
        parts = [
            f"{kind} {', '.join(sorted(names))}"
            for kind, names in (
                ("collections", self.collections),
                ("destinations", self.destinations),
            )
            if names
        ]
        return "; ".join(parts) or "none"


_RECORD = TypeAdapter(ApiKey)
_TAKE = Script.of(ratelimit.TAKE_SCRIPT)
_TAKE_LEFT = Script.of(ratelimit.TAKE_LEFT_SCRIPT)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _TOKEN.fullmatch(token)
    return None if match is None else (match[1], match[2])


class InvalidKeyParameters(InputError):
    """A new key's name, rate or burst is not one a key may have."""


def new_key(
    name: str,
    *,
    admin: bool = False,
    collections: Iterable[str] = (),
    destinations: Iterable[str] = (),
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> tuple[ApiKey, str]:
    """A fresh key's record and the key itself: the only time the key exists in full.

    Raises InvalidKeyParameters for a bad name or limits (the CLI shows the message)."""
    if NAME.fullmatch(name) is None:
        raise InvalidKeyParameters(
            f"invalid key name {name!r}: 1-100 characters, letters, digits, space and _.@:/-"
        )
    if rate_per_s is not None and not rate_per_s > 0:
        raise InvalidKeyParameters(f"rate must be > 0 requests/s, not {rate_per_s}")
    if burst is not None and burst < 1:
        raise InvalidKeyParameters(f"burst must be >= 1, not {burst}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(
        key_id=key_id,
        name=name,
        secret_hash=hash_secret(secret),
        admin=admin,
        collections=frozenset(collections),
        destinations=frozenset(destinations),
        rate_per_s=rate_per_s,
        burst=burst,
        created_at=time.time(),
    )
    return record, f"{TOKEN_PREFIX}_{key_id}_{secret}"


class KeyStore(ABC):
    """Where key records and their rate-limit buckets live."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    @abstractmethod
    async def create(self, key: ApiKey) -> None:
        """Store a new key's record."""

    @abstractmethod
    async def get(self, key_id: str) -> ApiKey | None:
        """The record of `key_id` as stored now (uncached), None when there is none."""

    @abstractmethod
    async def list_keys(self) -> list[ApiKey]:
        """Every record, oldest first."""

    @abstractmethod
    async def _remove(self, key_id: str) -> bool:
        """Delete a record and its bucket; whether there was one."""

    @abstractmethod
    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        """Count one request against the key's bucket: seconds to wait, 0 = allowed."""

    def charge(self, key_id: str, rate_per_s: float, burst: int) -> Awaitable[float | bytes]:
        """`take`, started now and awaited later: its seconds to wait, as a float or as
        the bytes of one (`float()` reads both)."""
        return asyncio.ensure_future(self.take(key_id, rate_per_s, burst))

    async def charge_left(
        self, key_id: str, rate_per_s: float, burst: int
    ) -> tuple[float, float | None]:
        """`take`, and the tokens the key's bucket has left after it (None: this store
        does not say), for `api.headroom`."""
        return await self.take(key_id, rate_per_s, burst), None

    def has_read(self, key_id: str) -> bool:
        """Whether this process holds a record of `key_id` it read, fresh or not: a key
        that existed, so looking it up again costs Redis about one GET per
        `cache_ttl_s`, whoever sends it (`api.auth.admit`)."""
        return key_id in self._cache

    async def lookup(self, key_id: str) -> ApiKey | None:
        """`get`, answered from this process's cache when read less than
        `cache_ttl_s` ago. Unknown ids are not cached here: they cannot fill memory
        (`api.auth_limits.UnknownKeys` remembers them, bounded, for the API)."""
        now = self.clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        key = await self.get(key_id)
        if key is None:
            self._cache.pop(key_id, None)
        else:
            self._cache[key_id] = (now, key)
        return key

    async def revoke(self, key_id: str) -> bool:
        """Delete a key; whether it existed. Other processes stop accepting it when
        their cached record expires (`cache_ttl_s`)."""
        self._cache.pop(key_id, None)
        return await self._remove(key_id)

    async def close(self) -> None:  # noqa: B027 - optional hook, the memory store holds nothing
        pass


class MemoryKeyStore(KeyStore):
    """Dicts with the same semantics, for tests without I/O; `clock` drives both the
    cache and the buckets."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cache_ttl_s, clock)
        self.records: dict[str, ApiKey] = {}
        self.buckets: dict[str, ratelimit.Bucket] = {}

    async def create(self, key: ApiKey) -> None:
        self.records[key.key_id] = key

    async def get(self, key_id: str) -> ApiKey | None:
        return self.records.get(key_id)

    async def list_keys(self) -> list[ApiKey]:
        return sorted(self.records.values(), key=lambda key: key.created_at)

    async def _remove(self, key_id: str) -> bool:
        self.buckets.pop(key_id, None)
        return self.records.pop(key_id, None) is not None

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        bucket, wait = ratelimit.take(self.buckets.get(key_id), self.clock(), rate_per_s, burst)
        self.buckets[key_id] = bucket
        return wait

    async def charge_left(
        self, key_id: str, rate_per_s: float, burst: int
    ) -> tuple[float, float | None]:
        wait = await self.take(key_id, rate_per_s, burst)
        return wait, self.buckets[key_id].tokens


class RedisKeyStore(KeyStore):
    """Records as JSON strings under `ApiKeyLayout.api_key`, their ids in a set (listing
    never scans the profile keys), buckets as hashes driven by a Lua script."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: ApiKeyLayout,
        reads: RespClient,
        cache_ttl_s: float = 2.0,
    ) -> None:
        super().__init__(cache_ttl_s)
        self.client = client
        self.keys = keys
        #: the per-request calls (`get`, `take`) go through the API's lean client
        self.reads = reads

    @classmethod
    def from_url(
        cls, url: Redis, prefix: str, cache_ttl_s: float = 2.0, reads: RespClient | None = None
    ) -> RedisKeyStore:
        """`url`: settings, or a URL alone; `reads`: a lean connection to share
        (closing the store closes it)."""
        # administration only (create, list, revoke: the CLI); requests use `reads`
        client = async_client(
            url, decode_responses=False, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        return cls(client, ApiKeyLayout(prefix), reads or resp_client(url), cache_ttl_s)

    async def create(self, key: ApiKey) -> None:
        async with self.client.pipeline(transaction=True) as transaction:
            transaction.set(self.keys.api_key(key.key_id), _RECORD.dump_json(key), nx=True)
            transaction.sadd(self.keys.api_key_ids(), key.key_id)
            stored, _ = await transaction.execute()
        if not stored:  # 1 in 2**48 per pair of keys; never overwrite another key
            raise RuntimeError(f"key id {key.key_id} is taken; create the key again")

    async def get(self, key_id: str) -> ApiKey | None:
        raw = cast("bytes | None", await self.reads.call("GET", self.keys.api_key(key_id)))
        return None if raw is None else _RECORD.validate_json(raw)

    async def list_keys(self) -> list[ApiKey]:
        ids = sorted(cast("set[bytes]", await self.client.smembers(self.keys.api_key_ids())))
        if not ids:
            return []
        raws = cast(
            "list[bytes | None]",
            await self.client.mget([self.keys.api_key(key_id.decode()) for key_id in ids]),
        )
        records = [_RECORD.validate_json(raw) for raw in raws if raw is not None]
        return sorted(records, key=lambda key: key.created_at)

    async def _remove(self, key_id: str) -> bool:
        async with self.client.pipeline(transaction=True) as transaction:
            transaction.delete(self.keys.api_key(key_id))
            transaction.srem(self.keys.api_key_ids(), key_id)
            transaction.delete(self.keys.rate_bucket(key_id))
            deleted, _, _ = await transaction.execute()
        return bool(deleted)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        return float(await self.charge(key_id, rate_per_s, burst))

    def charge(self, key_id: str, rate_per_s: float, burst: int) -> Awaitable[float | bytes]:
        # queued on the shared connection at once, without a task (traitflow.resp)
        return self.reads.eval_soon(
            _TAKE,
            [self.keys.rate_bucket(key_id)],
            [repr(rate_per_s), burst, ratelimit.idle_expiry_ms(rate_per_s, burst)],
        )

    async def charge_left(
        self, key_id: str, rate_per_s: float, burst: int
    ) -> tuple[float, float | None]:
        wait, tokens = await self.reads.eval_soon(
            _TAKE_LEFT,
            [self.keys.rate_bucket(key_id)],
            [repr(rate_per_s), burst, ratelimit.idle_expiry_ms(rate_per_s, burst)],
        )
        return float(wait), float(tokens)

    async def close(self) -> None:
        await self.client.aclose()
        await self.reads.close()
