"""The API's Prometheus metrics, and a store that times its calls to Redis.

Each app has its own `CollectorRegistry` (`ApiState.metrics.registry`), not the
process-global one, so that apps made in one process (tests) never share series.

- `traitflow_api_requests_total{method,route,status}`: requests by route template
  (`/v1/collections/{collection}/records/{index}/{value}`, never the raw path, so
  that the series stay bounded; unmatched paths are `<unmatched>`);
- `traitflow_api_request_seconds{method,route,status}`: their latency, from the first
  byte the app sees to the last it sends;
- `traitflow_api_redis_seconds{operation}`: the latency of each store call
  (`read_view`, `read_views`, `ping`, ...): one Redis round trip each;
- `traitflow_api_redis_errors_total{kind}`: requests answered 503 because Redis failed
  (`api.errors`), by kind: an error reply's code (`LOADING`, `READONLY`, `OOM`, ...),
  `timeout` or `connection`. The caller is told none of it; this and the log are
  where an operator sees what is wrong;
- `traitflow_ingest_events_total{source,outcome}`: events of HTTP ingest calls
  (`api.ingest`) by the source their write key names (`<unknown>` before a key named
  one) and what became of them: `accepted` (on the broker), `rejected` (refused by
  validation: 400), `unauthorized` (no or an unknown write key: 401), `rate_limited`
  (the write key's rate limit: 429), `unavailable` (503: the broker did not acknowledge
  in time, or Redis failed the rate-limit charge). A refused call's events are all
  counted, as none of them was published. Bounded: sources are configured.
- `traitflow_api_refusals_total{reason}`: API-key requests refused without costing
  Redis a read (`api.auth`): `key_rate_limit` (429: the key's rate limit, decided in
  the script that would have read), `unknown_key_cached` (401 answered from the
  process's memory of unknown key ids), `auth_failures` (429: the client's address
  failed authentication too often).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from time import perf_counter
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from attributes.profile import ProfileState
from traitflow.store import Expected, Identity, MessageKey, ProfileStore, ProfileWrite

T = TypeVar("T")

#: seconds: from a read served from memory in well under a millisecond to a loaded one
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "traitflow_api_requests",
            "HTTP requests, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "traitflow_api_request_seconds",
            "HTTP request latency, by method, route template and status.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.redis_seconds = Histogram(
            "traitflow_api_redis_seconds",
            "Latency of the API's store calls (one Redis round trip each), by operation.",
            ["operation"],
            buckets=REDIS_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "traitflow_api_redis_errors",
            "Requests answered 503 because Redis failed, by kind: an error reply's first "
            "word (LOADING, READONLY, OOM, MOVED, ...), timeout or connection.",
            ["kind"],
            registry=self.registry,
        )
        self.ingest_events = Counter(
            "traitflow_ingest_events",
            "Events of HTTP ingest calls, by source and outcome: accepted, rejected "
            "(validation), unauthorized, rate_limited, unavailable (broker or Redis).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.audience_size = Gauge(
            "traitflow_audience_size",
            "Profiles in each audience, as the worker's commits keep it (set per scrape).",
            ["entity", "audience"],
            registry=self.registry,
        )
        #: profile counts (`traitflow.profile_counts`): per entity, source, namespace
        self.profile_counts = (
            Gauge(
                "traitflow_profiles",
                "Profiles of each entity, as the worker's commits keep it (set per scrape).",
                ["entity"],
                registry=self.registry,
            ),
            Gauge(
                "traitflow_profiles_by_source",
                "Profiles holding traits from each source (set per scrape).",
                ["entity", "source"],
                registry=self.registry,
            ),
            Gauge(
                "traitflow_profiles_by_namespace",
                "Profiles holding an identity of each type (set per scrape).",
                ["entity", "namespace"],
                registry=self.registry,
            ),
        )
        self.erasures_requested = Counter(
            "traitflow_erasures_requested",
            "Erase requests (GDPR) accepted by DELETE /access/entities and published.",
            registry=self.registry,
        )
        #: requests refused before they could cost Redis anything (`api.auth`)
        self.refusals = Counter(
            "traitflow_api_refusals",
            "API-key requests refused without a Redis read, by reason: key_rate_limit "
            "(429, the key's rate limit; no profile read), unknown_key_cached (401 from "
            "the remembered unknown key ids; no lookup), auth_failures (429, the client "
            "address failed to authenticate too often; no lookup).",
            ["reason"],
            registry=self.registry,
        )
        # `labels()` takes a lock and builds a key per call: keep the children
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._redis_children: dict[str, Histogram] = {}
        self._ingest_children: dict[tuple[str, str], Counter] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_refusal(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def observe_store_error(self, kind: str) -> None:
        self.store_errors.labels(kind).inc()

    def observe_ingest(self, source: str, outcome: str, events: int) -> None:
        child = self._ingest_children.get((source, outcome))
        if child is None:
            child = self._ingest_children[source, outcome] = self.ingest_events.labels(
                source, outcome
            )
        child.inc(events)

    def observe_redis(self, operation: str, seconds: float) -> None:
        child = self._redis_children.get(operation)
        if child is None:
            child = self._redis_children[operation] = self.redis_seconds.labels(operation)
        child.observe(seconds)


class InstrumentedStore(ProfileStore):
    """Delegates every call to `inner` and observes how long it took."""

    def __init__(self, inner: ProfileStore, metrics: ApiMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        start = perf_counter()
        try:
            return await call
        finally:
            self.metrics.observe_redis(operation, perf_counter() - start)

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        return await self._timed("read_view", self.inner.read_view(entity, index, value))

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        return await self._timed("read_views", self.inner.read_views(entity, lookups))

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        return await self._timed("read_profiles", self.inner.read_profiles(entity, lookups))

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        return await self._timed("load", self.inner.load(entity, ids))

    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        return await self._timed("lookup", self.inner.lookup(entity, identities))

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        return await self._timed("applied", self.inner.applied(entity, messages))

    async def note_erasure(self, request: str, status: bytes) -> None:
        await self._timed("note_erasure", self.inner.note_erasure(request, status))

    async def erasure_status(self, request: str) -> bytes | None:
        return await self._timed("erasure_status", self.inner.erasure_status(request))

    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        return await self._timed("tombstones", self.inner.tombstones(entity, identities))

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        await self._timed(
            "commit", self.inner.commit(entity, writes, removed=removed, expected=expected)
        )

    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        return await self._timed("due", self.inner.due(entity, source, now=now, limit=limit))

    async def audience_sizes(self, entity: str) -> dict[str, int]:
        return await self._timed("audience_sizes", self.inner.audience_sizes(entity))

    async def profile_counts(self, entity: str) -> dict[str, int]:
        return await self._timed("profile_counts", self.inner.profile_counts(entity))

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        await self._timed("unschedule", self.inner.unschedule(entity, source, ids))

    def abandon(self, entity: str, ids: Sequence[str]) -> None:
        self.inner.abandon(entity, ids)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # anything a store grows beyond the ABC (e.g. `client`, `keys`) reads through
        return getattr(self.inner, name)
