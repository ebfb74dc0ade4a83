"""Where Treasure Data personalization services live, and what a call publishes with.

Services come from the personalization file (fixed for the process's life) and from
the admin API (`api.td_admin`), which keeps them in Redis: the service itself in one
hash, each service's offers and tokens in a hash of their own, so adding a token is
one atomic script that also enforces the 50-token limit across API processes. Every
process caches the stored services for `TRAITFLOW_API_KEY_CACHE_S`, as it does API
keys: a revoked token stops working everywhere within that time (at once in the
process that revoked it).

"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from attributes.offers import (
    MAX_TOKENS,
    InvalidService,
    OfferSpec,
    RtToken,
    Service,
    ServiceSpec,
    TokenSpec,
    compile_service,
    hash_token,
)
from traitflow.resp import RespClient, Script

log = logging.getLogger(__name__)

TokenAdded = Literal["added", "exists", "full", "no service"]


class ServiceStore(ABC):
    """The services made through the API, by name, with their offers and tokens."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cached: tuple[float, dict[str, ServiceSpec]] | None = None

    @abstractmethod
    async def _load(self) -> dict[str, ServiceSpec]:
        """Every stored service, with its offers and tokens, read now."""

    @abstractmethod
    async def _put(self, spec: ServiceSpec) -> bool:
        """Store a service's own fields (its offers and tokens stay); whether it is new."""

    @abstractmethod
    async def _remove(self, name: str) -> bool:
        """Delete a service, its offers and tokens; whether there was one."""

    @abstractmethod
    async def _put_offer(self, service: str, offer: OfferSpec) -> bool | None:
        """Store an offer; whether it is new; None: no such service."""

    @abstractmethod
    async def _remove_offer(self, service: str, offer: str) -> bool:
        """Delete an offer; whether there was one."""

    @abstractmethod
    async def _add_token(self, service: str, token: TokenSpec) -> TokenAdded:
        """Store a token unless its instance has one or the service has `MAX_TOKENS`."""

    @abstractmethod
    async def _remove_token(self, service: str, instance_id: str) -> bool:
        """Delete a token; whether there was one."""

    async def all(self) -> dict[str, ServiceSpec]:
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.cache_ttl_s:
            return self._cached[1]
        loaded = await self._load()
        self._cached = (now, loaded)
        return loaded

    async def put(self, spec: ServiceSpec) -> bool:
        self._cached = None
        return await self._put(spec.model_copy(update={"offers": [], "tokens": []}))

    async def remove(self, name: str) -> bool:
        self._cached = None
        return await self._remove(name)

    async def put_offer(self, service: str, offer: OfferSpec) -> bool | None:
        self._cached = None
        return await self._put_offer(service, offer)

    async def remove_offer(self, service: str, offer: str) -> bool:
        self._cached = None
        return await self._remove_offer(service, offer)

    async def add_token(self, service: str, token: TokenSpec) -> TokenAdded:
        self._cached = None
        return await self._add_token(service, token)

    async def remove_token(self, service: str, instance_id: str) -> bool:
        self._cached = None
        return await self._remove_token(service, instance_id)

    async def close(self) -> None:  # noqa: B027 - optional hook, the memory store holds nothing
        pass


class MemoryServiceStore(ServiceStore):
    """Dicts, for tests of the API without Redis."""

    def __init__(
        self, cache_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cache_ttl_s, clock)
        self.services: dict[str, ServiceSpec] = {}
        self.offers: dict[str, dict[str, OfferSpec]] = {}
        self.tokens: dict[str, dict[str, TokenSpec]] = {}

    async def _load(self) -> dict[str, ServiceSpec]:
        return {
            name: spec.model_copy(
                update={
                    "offers": list(self.offers.get(name, {}).values()),
                    "tokens": list(self.tokens.get(name, {}).values()),
                }
            )
            for name, spec in self.services.items()
        }

    async def _put(self, spec: ServiceSpec) -> bool:
        new = spec.name not in self.services
        self.services[spec.name] = spec
        return new

    async def _remove(self, name: str) -> bool:
        self.offers.pop(name, None)
        self.tokens.pop(name, None)
        return self.services.pop(name, None) is not None

    async def _put_offer(self, service: str, offer: OfferSpec) -> bool | None:
        if service not in self.services:
            return None
        offers = self.offers.setdefault(service, {})
        new = offer.name not in offers
        offers[offer.name] = offer
        return new

    async def _remove_offer(self, service: str, offer: str) -> bool:
        return self.offers.get(service, {}).pop(offer, None) is not None

    async def _add_token(self, service: str, token: TokenSpec) -> TokenAdded:
        if service not in self.services:
            return "no service"
        tokens = self.tokens.setdefault(service, {})
        if token.instance_id in tokens:
            return "exists"
        if len(tokens) >= MAX_TOKENS:
            return "full"
        tokens[token.instance_id] = token
        return "added"

    async def _remove_token(self, service: str, instance_id: str) -> bool:
        return self.tokens.get(service, {}).pop(instance_id, None) is not None


# KEYS: services hash, the service's tokens hash. ARGV: service, instance id, token
# JSON, the limit. The check and the write in one step: two API processes adding the
# 50th token cannot both succeed.
_ADD_TOKEN = Script.of("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'no service' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 'exists' end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 'added'
""")
# KEYS: services hash, the service's offers hash. ARGV: service, offer name, JSON.
_PUT_OFFER = Script.of("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
return redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
""")
# KEYS: services hash, offers hash, tokens hash. ARGV: service.
_REMOVE = Script.of("""
redis.call('DEL', KEYS[2], KEYS[3])
return redis.call('HDEL', KEYS[1], ARGV[1])
""")


class RedisServiceStore(ServiceStore):
    """`{prefix}:p13n:services` (name -> the service's own fields), and per service
    `{prefix}:p13n:offers:{name}` and `{prefix}:p13n:tokens:{name}`, through the
    API's lean Redis client (shared: the app closes it)."""

    def __init__(self, reads: RespClient, prefix: str, cache_ttl_s: float = 2.0) -> None:
        super().__init__(cache_ttl_s)
        self.reads = reads
        self.prefix = prefix
        self.services_key = f"{prefix}:p13n:services"

    def _offers(self, service: str) -> str:
        return f"{self.prefix}:p13n:offers:{service}"

    def _tokens(self, service: str) -> str:
        return f"{self.prefix}:p13n:tokens:{service}"

    async def _hash(self, key: str) -> dict[bytes, bytes]:
        flat = cast("list[bytes]", await self.reads.call("HGETALL", key))
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def _load(self) -> dict[str, ServiceSpec]:
        services = await self._hash(self.services_key)
        names = sorted(name.decode() for name in services)
        parts = await asyncio.gather(
            *(self._hash(key) for name in names for key in (self._offers(name), self._tokens(name)))
        )
        loaded: dict[str, ServiceSpec] = {}
        for i, name in enumerate(names):
            offers, tokens = parts[2 * i], parts[2 * i + 1]
            loaded[name] = ServiceSpec.model_validate_json(services[name.encode()]).model_copy(
                update={
                    "offers": [OfferSpec.model_validate_json(raw) for raw in offers.values()],
                    "tokens": [TokenSpec.model_validate_json(raw) for raw in tokens.values()],
                }
            )
        return loaded

    async def _put(self, spec: ServiceSpec) -> bool:
        added = await self.reads.call("HSET", self.services_key, spec.name, spec.model_dump_json())
        return bool(added)

    async def _remove(self, name: str) -> bool:
        keys = [self.services_key, self._offers(name), self._tokens(name)]
        return bool(await self.reads.eval(_REMOVE, keys, [name]))

    async def _put_offer(self, service: str, offer: OfferSpec) -> bool | None:
        keys = [self.services_key, self._offers(service)]
        added = await self.reads.eval(
            _PUT_OFFER, keys, [service, offer.name, offer.model_dump_json()]
        )
        return None if added == -1 else bool(added)

    async def _remove_offer(self, service: str, offer: str) -> bool:
        return bool(await self.reads.call("HDEL", self._offers(service), offer))

    async def _add_token(self, service: str, token: TokenSpec) -> TokenAdded:
        keys = [self.services_key, self._tokens(service)]
        args: list[str | int] = [service, token.instance_id, token.model_dump_json(), MAX_TOKENS]
        reply = await self.reads.eval(_ADD_TOKEN, keys, args)
        return cast("TokenAdded", reply.decode() if isinstance(reply, bytes) else reply)

    async def _remove_token(self, service: str, instance_id: str) -> bool:
        return bool(await self.reads.call("HDEL", self._tokens(service), instance_id))


@dataclass(frozen=True, slots=True)
class Registry:
    """The services a call can reach, compiled, and their tokens by digest."""

    services: Mapping[str, Service]
    by_digest: Mapping[str, Service]

    def service_of(self, token: RtToken) -> Service | None:
        """The service `token` belongs to, when its secret, instance and account match."""
        service = self.by_digest.get(hash_token(token.secret))
        if service is None or service.spec.account_id != token.account_id:
            return None
        if service.tokens.get(hash_token(token.secret)) != token.instance_id:
            return None
        return service


class Personalization:
    """The configured services and those made through the API."""

    def __init__(
        self,
        configured: Mapping[str, Service],
        store: ServiceStore,
        *,
        entities: Sequence[str] = ("user",),
        topics: Sequence[str] = ("traitflow-events",),
    ) -> None:
        self.configured = configured
        self.store = store
        self.entities = tuple(entities)
        self.topics = tuple(topics)
        self._compiled: tuple[dict[str, ServiceSpec], Registry] | None = None

    def compile(self, spec: ServiceSpec) -> Service:
        """Raises InvalidService (the admin API answers 400 with its problems)."""
        return compile_service(spec, self.entities, self.topics)

    async def registry(self) -> Registry:
        stored = await self.store.all()
        if self._compiled is not None and self._compiled[0] is stored:
            return self._compiled[1]
        services = dict(self.configured)
        for name, spec in stored.items():
            if name in services:
                continue  # the configured one wins; the API refuses to make one
            try:
                services[name] = self.compile(spec)
            except InvalidService as exc:  # e.g. its entity is no longer configured
                log.warning("personalization service %r skipped: %s", name, exc)
        by_digest = {digest: s for s in services.values() for digest in s.tokens}
        registry = Registry(services, by_digest)
        self._compiled = (stored, registry)
        return registry

    async def close(self) -> None:
        await self.store.close()
