"""Readiness and Redis latency metrics against a real Redis (`api.operations`)."""

from __future__ import annotations

import gc
import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.state import state_of
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_ready_against_real_redis(settings: Settings) -> None:
    async with serve(create_app(settings)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_not_ready_against_a_closed_port(settings: Settings) -> None:
    closed = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with serve(create_app(closed)) as client:
        start = time.monotonic()
        response = await client.get("/readyz")
        took = time.monotonic() - start
        assert (await client.get("/healthz")).status_code == 200
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "failing": ["redis"],
        "error": "redis: connection",
    }
    assert took < closed.api_ready_timeout_s + 1.0


async def test_metrics_show_redis_latency_after_a_read(settings: Settings) -> None:
    async with serve(create_app(settings)) as client:
        collection = next(iter(settings.collections))
        read = await client.get(f"/v1/collections/{collection}/records/user_id/nobody")
        assert read.status_code == 404
        text = (await client.get("/metrics")).text
    assert 'traitflow_api_redis_seconds_count{operation="read_view"} 1.0' in text
    route = "/v1/collections/{collection}/records/{index}/{value}"
    assert f'traitflow_api_requests_total{{method="GET",route="{route}",status="404"}} 1.0' in text


def test_the_server_process_is_ready_and_serves_metrics(api_server: str) -> None:
    assert httpx.get(f"{api_server}/readyz").json() == {"status": "ready"}
    metrics = httpx.get(f"{api_server}/metrics")
    assert metrics.status_code == 200
    assert 'route="/readyz",status="200"' in metrics.text
    assert 'traitflow_api_redis_seconds_count{operation="ping"}' in metrics.text


async def test_reads_are_a_503_while_redis_is_unreachable(settings: Settings) -> None:
    """Keys are checked in memory (`serve` gives a MemoryKeyStore); the read meets the
    closed port, and the caller learns it is the store, and when to retry."""
    closed = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with serve(create_app(closed)) as client:
        collection = next(iter(closed.collections))
        response = await client.get(f"/v1/collections/{collection}/records/user_id/u-1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    # the store, and when to retry; not where it is (that is in the API's log)
    assert response.json() == {"error": "profile store unavailable; try again"}


async def test_reads_leave_no_reference_cycles(settings: Settings) -> None:
    """Cyclic garbage from the read path is what the collector pauses on: at ~11 cyclic
    objects per read the API stalled ~100 ms per collection (its p99). Every read must
    free what it allocates by reference counting alone. The app is called as ASGI, not
    through a test client (whose own objects are cyclic)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):  # the real Redis stores, keys included
        token = await add_key(state_of(app).keys, "no-cycles", admin=True)
        header = bearer(token)["Authorization"].encode()
        collection = next(iter(settings.collections))
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def read(path: str) -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"t"), (b"authorization", header)],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 80),
            }
            await app(scope, receive, send)

        paths = [
            f"/v1/collections/{collection}/records/id/nobody",
            f"/v1/collections/{collection}/records/user_id/nobody",
        ]
        for path in paths:  # warm up: caches, connections, scripts
            await read(path)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                for path in paths:
                    await read(path)
            gc.collect()
            garbage = [type(thing).__name__ for thing in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        await state_of(app).keys.revoke(token.split("_")[1])
    assert statuses == [404] * 42
    assert garbage == []
