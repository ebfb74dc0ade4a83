"""Operating HTTP ingest's write keys, in process (`api.ingest`): every call's events
counted by source and outcome on /metrics, and the per-write-key rate limit (the API
keys' token bucket), off unless configured."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.errors import UNAVAILABLE
from api.keys import MemoryKeyStore
from api.publisher import ListPublisher
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.resp import RespConnectionError

pytestmark = pytest.mark.anyio

WEB_KEY = "wk-web-ops"
SERVER_KEY = "wk-server-ops"
SETTINGS = Settings(
    sources={"events-web": "web", "events-server": "server"},
    write_keys={
        hashlib.sha256(WEB_KEY.encode()).hexdigest(): "web",
        hashlib.sha256(SERVER_KEY.encode()).hexdigest(): "server",
    },
)
TRACK = {"userId": "u1", "event": "Order Completed"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


class FailingKeyStore(MemoryKeyStore):
    """Redis fails the rate-limit charge, as an unreachable one does."""

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        raise RespConnectionError("connection refused (test)")


@asynccontextmanager
async def ingest(
    settings: Settings = SETTINGS, keys: MemoryKeyStore | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, ListPublisher, MemoryKeyStore]]:
    """A client sending the web source's write key, what the app published, its keys."""
    published = ListPublisher()
    keys = keys if keys is not None else MemoryKeyStore()
    app = create_app(settings, store=MemoryProfileStore(), publisher=published, keys=keys)
    async with api_support.serve(app, key=None) as client:
        client.headers.update(basic(WEB_KEY))
        yield client, published, keys


async def counted(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """`traitflow_ingest_events_total` as /metrics serves it: (source, outcome) -> n."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "traitflow_ingest_events_total":
                found[(sample.labels["source"], sample.labels["outcome"])] = sample.value
    return found


async def test_accepted_events_are_counted_by_their_write_keys_source() -> None:
    async with ingest() as (client, published, _):
        assert (await client.post("/v1/track", json=TRACK)).status_code == 200
        batch = {"batch": [{"type": "page", "userId": "u1"}] * 3}
        assert (await client.post("/v1/batch", json=batch)).status_code == 200
        server = await client.post("/v1/identify", json={"userId": "s"}, headers=basic(SERVER_KEY))
        assert server.status_code == 200
        assert len(published.records) == 5
        assert await counted(client) == {("web", "accepted"): 4.0, ("server", "accepted"): 1.0}


async def test_a_refused_calls_events_are_all_counted_by_why() -> None:
    async with ingest() as (client, published, _):
        assert (await client.post("/v1/track", json={"userId": "u1"})).status_code == 400
        bad_batch = {"batch": [{"type": "page", "userId": "u1"}, {"type": "track"}, {}]}
        assert (await client.post("/v1/batch", json=bad_batch)).status_code == 400
        wrong_key = await client.post("/v1/batch", json=bad_batch, headers=basic("wk-nope"))
        assert wrong_key.status_code == 401
        no_key = await client.post("/v1/track", json=TRACK, headers={"Authorization": ""})
        assert no_key.status_code == 401
        published.fail = True
        assert (await client.post("/v1/track", json=TRACK)).status_code == 503
        two = {"batch": [{"type": "page", "userId": "u1"}] * 2}
        assert (await client.post("/v1/batch", json=two)).status_code == 503
        assert await counted(client) == {
            ("web", "rejected"): 4.0,  # 1 + the 3 of the refused batch
            ("<unknown>", "unauthorized"): 4.0,  # 3 + 1
            ("web", "unavailable"): 3.0,  # 1 + 2
        }
        assert published.records == []


async def test_without_a_configured_rate_there_is_no_limit_and_no_bucket() -> None:
    assert SETTINGS.write_key_rate_per_s is None
    async with ingest() as (client, _, keys):
        statuses = {(await client.post("/v1/track", json=TRACK)).status_code for _ in range(300)}
        assert statuses == {200}
        assert keys.buckets == {}  # no charge: ingest makes no Redis round trip


def limited(rate: float, burst: int | None = None) -> Settings:
    return Settings(
        **SETTINGS.model_dump(include={"sources", "write_keys"}),
        write_key_rate_per_s=rate,
        write_key_burst=burst,
    )


async def test_past_a_write_keys_rate_limit_a_429_and_nothing_published() -> None:
    async with ingest(limited(0.01, burst=2)) as (client, published, keys):
        statuses = [(await client.post("/v1/track", json=TRACK)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await client.post("/v1/batch", json={"batch": [{"type": "page", "userId": "u"}]})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"] == "application/json"
        assert "rate limit" in refused.json()["error"]
        assert len(published.records) == 2
        # the limit is per write key: another source's key has a bucket of its own
        other = await client.post("/v1/track", json=TRACK, headers=basic(SERVER_KEY))
        assert other.status_code == 200
        digest = hashlib.sha256(WEB_KEY.encode()).hexdigest()
        assert f"wk.{digest}" in keys.buckets
        assert await counted(client) == {
            ("web", "accepted"): 2.0,
            ("web", "rate_limited"): 2.0,
            ("server", "accepted"): 1.0,
        }


async def test_an_invalid_key_is_refused_before_it_is_charged() -> None:
    async with ingest(limited(0.01, burst=1)) as (client, _, keys):
        for _ in range(3):
            wrong = await client.post("/v1/track", json=TRACK, headers=basic("wk-nope"))
            assert wrong.status_code == 401
        assert keys.buckets == {}
        assert (await client.post("/v1/track", json=TRACK)).status_code == 200


@pytest.mark.parametrize(("rate", "allowed"), [(1.0, 2), (0.2, 1), (2.5, 5)])
async def test_the_burst_defaults_to_twice_the_rate(rate: float, allowed: int) -> None:
    async with ingest(limited(rate)) as (client, _, _):
        statuses = [
            (await client.post("/v1/track", json=TRACK)).status_code for _ in range(allowed + 1)
        ]
        assert statuses == [200] * allowed + [429]


async def test_redis_failing_the_charge_is_the_apis_503_and_counted_unavailable() -> None:
    async with ingest(limited(10.0), keys=FailingKeyStore()) as (client, published, _):
        response = await client.post("/v1/track", json=TRACK)
        assert (response.status_code, response.json()) == (503, {"error": UNAVAILABLE})
        assert response.headers["retry-after"] == "1"
        assert published.records == []
        assert await counted(client) == {("web", "unavailable"): 1.0}


def test_the_rate_limit_is_set_per_process_from_its_environment() -> None:
    settings = Settings.from_environ(
        {"TRAITFLOW_WRITE_KEY_RATE_PER_S": "50", "TRAITFLOW_WRITE_KEY_BURST": "80"}
    )
    assert (settings.write_key_rate_per_s, settings.write_key_burst) == (50.0, 80)
    assert Settings.from_environ({}).write_key_rate_per_s is None
    for bad in ({"TRAITFLOW_WRITE_KEY_RATE_PER_S": "0"}, {"TRAITFLOW_WRITE_KEY_BURST": "0"}):
        with pytest.raises(ValueError, match="write_key"):
            Settings.from_environ(bad)
