"""Readiness and metrics endpoints (`api.operations`, `api.instrumented`)."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from api.app import create_app
from api.instrumented import ApiMetrics, InstrumentedStore
from api.keys import KEY_ID, MemoryKeyStore
from api.operations import PROBE_KEY_ID
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.resp import RespError
from traitflow.state_cache import CachedProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio


class PingingStore(MemoryProfileStore):
    def __init__(self, failure: BaseException | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.failure = failure
        self.delay = delay
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure


async def test_ready_when_the_store_answers() -> None:
    store = PingingStore()
    async with serve(create_app(Settings(), store=store)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
    assert store.pings == 1


async def test_a_store_without_a_connection_is_ready() -> None:
    async with serve(create_app(Settings(), store=MemoryProfileStore())) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_not_ready_when_the_ping_fails() -> None:
    store = PingingStore(ConnectionError("Error 111 connecting to 127.0.0.1:1"))
    async with serve(create_app(Settings(), store=store)) as client:
        response = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200  # alive all the same
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    # which dependency fails, never where it is (the log has the address)
    assert response.json() == {
        "status": "unavailable",
        "failing": ["redis"],
        "error": "redis: connection",
    }


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        ("MOVED 3999 127.0.0.1:6381", "MOVED"),
    ],
)
async def test_not_ready_when_redis_answers_an_error(reply: str, kind: str) -> None:
    store = PingingStore(RespError(reply))
    async with serve(create_app(Settings(), store=store)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "failing": ["redis"],
        "error": f"redis: {kind}",
    }
    assert "127.0.0.1" not in response.text


class ChargeFailingKeys(MemoryKeyStore):
    """Answers reads, refuses writes: the rate-limit charge fails."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__()
        self.failure = failure
        self.charged: list[str] = []

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        self.charged.append(key_id)
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (RespError("READONLY You can't write against a read only replica."), "READONLY"),
        (RespError("OOM command not allowed when used memory > 'maxmemory'."), "OOM"),
        (
            redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
            "READONLY",
        ),
    ],
)
async def test_not_ready_when_redis_answers_a_ping_but_refuses_writes(
    failure: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every read charges its key's rate limit, a write: a read-only replica or a Redis
    out of memory answers PING and serves nothing. Readiness tries the same write."""
    keys = ChargeFailingKeys(failure)
    store = PingingStore()
    app = create_app(Settings(redis_url="redis://10.9.8.7:6390/0"), store=store, keys=keys)
    async with serve(app, key=None) as client:
        response = await client.get("/readyz")
    assert store.pings == 1
    assert keys.charged == [PROBE_KEY_ID]
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "failing": ["redis"],
        "error": f"redis: {kind}",
    }
    assert "10.9.8.7" not in response.text
    assert "6390" not in response.text
    assert "10.9.8.7:6390" in caplog.text  # where, for the operator


def test_the_probe_charges_a_bucket_no_key_can_have() -> None:
    assert KEY_ID.fullmatch(PROBE_KEY_ID) is None


async def test_not_ready_when_the_ping_is_too_slow() -> None:
    store = PingingStore(delay=5.0)
    app = create_app(Settings(api_ready_timeout_s=0.05), store=store)
    async with serve(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "failing": ["redis"],
        "error": "redis: no answer within 0.05 s",
    }


async def test_a_wrapped_store_is_pinged_through() -> None:
    failing = PingingStore(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await CachedProfileStore(failing, max_profiles=1).ping()
    with pytest.raises(ConnectionError):
        await InstrumentedStore(failing, ApiMetrics()).ping()
    assert failing.pings == 2


async def test_the_instrumented_store_times_reads_and_delegates() -> None:
    inner = MemoryProfileStore()
    state = ProfileState(id="u-1")
    await inner.save("user", [ProfileWrite(state, encode_state(state), b"{}", [("user_id", "x")])])
    metrics = ApiMetrics()
    store = InstrumentedStore(inner, metrics)
    assert await store.read_view("user", "user_id", "x") == b"{}"
    assert await store.read_views("user", [("id", "u-1"), ("id", "nobody")]) == [b"{}", None]
    assert list(await store.load("user", ["u-1"])) == ["u-1"]
    assert await store.due("user", "t/0", now=0, limit=10) == []
    await store.unschedule("user", "t/0", ["u-1"])
    store.abandon("user", ["u-1"])
    assert store.views is inner.views  # anything else reads through
    for operation in ("read_view", "read_views", "load", "due", "unschedule"):
        count = metrics.registry.get_sample_value(
            "traitflow_api_redis_seconds_count", {"operation": operation}
        )
        assert count == 1, operation


async def test_metrics_is_prometheus_text() -> None:
    async with serve(create_app(Settings(), store=MemoryProfileStore())) as client:
        await client.get("/readyz")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE traitflow_api_request_seconds histogram" in response.text
    assert "# TYPE traitflow_api_redis_seconds histogram" in response.text
    assert 'route="/readyz",status="200"' in response.text


async def test_operations_are_documented_with_examples() -> None:
    async with serve(create_app(Settings(), store=MemoryProfileStore())) as client:
        spec = (await client.get("/openapi.json")).json()
    for path in ("/healthz", "/readyz"):
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert "example" in content["application/json"], path
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert "/metrics" in spec["paths"]
