"""Request limits and request metrics (`api.middleware`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Request

from api.app import create_app
from api.state import state_of
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

LIMIT = 1024


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        Settings(collections={"users": "user"}, api_max_body_bytes=LIMIT),
        store=MemoryProfileStore(),
    )

    @app.post("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/echo-json")
    async def echo_json(body: dict[str, str]) -> dict[str, int]:
        return {"keys": len(body)}

    async with serve(app) as client:  # with an admin key
        yield client


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    """A body without Content-Length: httpx sends it `Transfer-Encoding: chunked`."""
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


async def test_a_body_within_the_limit_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo-size", content=b"x" * LIMIT)
    assert response.status_code == 200
    assert response.json() == {"size": LIMIT}


async def test_a_body_over_the_limit_is_a_json_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo-size", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": f"request body larger than {LIMIT} bytes"}


async def test_a_body_over_the_limit_is_refused_on_any_route(client: httpx.AsyncClient) -> None:
    # the declared length is enough: the body is never read, whatever the route
    response = await client.post("/v2/whatever", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413


async def test_a_chunked_body_over_the_limit_is_a_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo-size", content=chunks(LIMIT * 4))
    assert response.status_code == 413
    assert response.json() == {"error": f"request body larger than {LIMIT} bytes"}


async def test_a_chunked_body_over_the_limit_is_a_413_for_a_parsed_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/echo-json", content=chunks(LIMIT * 4))
    assert response.status_code == 413


async def test_a_chunked_body_within_the_limit_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo-size", content=chunks(LIMIT))
    assert response.status_code == 200
    assert response.json() == {"size": LIMIT}


async def test_a_normal_json_body_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo-json", json={"a": "b"})
    assert response.status_code == 200
    assert response.json() == {"keys": 1}


async def test_the_default_limit_is_64_kib() -> None:
    assert Settings().api_max_body_bytes == 65_536


async def metrics_text(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/healthz")
    await client.get("/healthz")
    await client.get("/v1/collections/users/records/id/nobody")
    await client.get("/no/such/path/1")
    await client.get("/no/such/path/2")
    await client.post("/echo-size", content=b"x" * (LIMIT + 1))
    text = await metrics_text(client)
    assert 'traitflow_api_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    records = "/v1/collections/{collection}/records/{index}/{value}"
    assert (
        f'traitflow_api_requests_total{{method="GET",route="{records}",status="404"}} 1.0' in text
    )
    assert 'route="<unmatched>",status="404"} 2.0' in text
    assert "nobody" not in text
    assert "/no/such" not in text
    # the 413 is refused before routing: it has no route
    assert 'traitflow_api_requests_total{method="POST",route="<unmatched>",status="413"}' in text
    assert (
        'traitflow_api_request_seconds_bucket{le="+Inf",method="GET",route="/healthz",'
        'status="200"} 2.0' in text
    )


async def test_a_method_outside_http_s_usual_ones_is_other(client: httpx.AsyncClient) -> None:
    await client.request("BREW", "/healthz")
    assert 'method="OTHER",route="/healthz",status="405"' in await metrics_text(client)


async def test_each_app_has_its_own_registry() -> None:
    one = create_app(Settings(), store=MemoryProfileStore())
    two = create_app(Settings(), store=MemoryProfileStore())
    assert state_of(one).metrics.registry is not state_of(two).metrics.registry
    async with serve(one) as client:
        await client.get("/healthz")
    async with serve(two) as client:
        assert 'route="/healthz"' not in await metrics_text(client)
