"""`DirectRoute` and `admitted`: documented like any route, called without FastAPI's
per-request machinery; the rate-limit charge settled after the route's read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response

from api.app import create_app
from api.auth import Principal, authenticate
from api.direct import DirectRoute, admitted
from api.keys import MemoryKeyStore
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.resp import RespConnectionError
from traitflow.store import MemoryProfileStore, ProfileWrite

pytestmark = pytest.mark.anyio


def direct_app() -> FastAPI:
    router = APIRouter(route_class=DirectRoute)

    @router.get("/things/{kind}/{name}")
    async def thing(
        kind: str,
        name: str,
        request: Request,
        schema_name: str | None = Query(None, alias="schema.name"),
        limit: str | None = Query(None),
    ) -> Response:
        return Response(repr((kind, name, schema_name, limit)).encode())

    app = FastAPI()
    app.router.routes.extend(router.routes)
    return app


async def test_path_and_query_parameters_arrive_as_strings_and_none() -> None:
    transport = httpx.ASGITransport(app=direct_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        both = await client.get("/things/a/b%20c", params={"schema.name": "s", "limit": "7"})
        neither = await client.get("/things/a/b")
    assert both.text == repr(("a", "b c", "s", "7"))
    assert neither.text == repr(("a", "b", None, None))


def test_the_parameters_are_still_documented() -> None:
    parameters = direct_app().openapi()["paths"]["/things/{kind}/{name}"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in parameters} == {
        ("kind", "path"),
        ("name", "path"),
        ("schema.name", "query"),
        ("limit", "query"),
    }


def test_a_header_parameter_is_refused() -> None:
    async def endpoint(request: Request, token: str = Header()) -> Response:
        return Response()

    with pytest.raises(TypeError, match="DirectRoute"):
        APIRouter(route_class=DirectRoute).get("/x")(endpoint)


def test_a_dependency_is_refused() -> None:
    async def endpoint(
        request: Request,
        principal: Principal = Depends(authenticate),  # noqa: B008 - what is being refused
    ) -> Response:
        return Response()

    with pytest.raises(TypeError, match="DirectRoute"):
        APIRouter(route_class=DirectRoute).get("/x")(endpoint)


def test_the_records_read_is_a_direct_route_and_documented() -> None:
    app = create_app(Settings())
    routes = {
        (route.path, tuple(sorted(route.methods or ()))): route
        for route in app.router.routes
        if isinstance(route, DirectRoute)
    }
    assert set(routes) == {
        ("/v1/collections/{collection}/records/{index}/{value}", ("GET",)),
        ("/v2/activation", ("POST",)),
    }
    operation = app.openapi()["paths"]["/v1/collections/{collection}/records/{index}/{value}"]
    names = {p["name"] for p in operation["get"]["parameters"]}
    assert names == {"collection", "index", "value", "fields"}


async def app_with(records: Sequence[str], **settings: Any) -> FastAPI:
    store = MemoryProfileStore()
    for pid in records:
        state = ProfileState(id=pid)
        await store.save(
            "user", [ProfileWrite(state, encode_state(state), b'{"id":"%s"}' % pid.encode())]
        )
    return create_app(Settings(**settings), store=store, keys=MemoryKeyStore())


async def test_a_request_past_the_burst_is_a_429_even_for_a_missing_record() -> None:
    """The charge is settled after the read: its 429 still comes first, as when it was
    checked before anything else."""
    app = await app_with(["u-1"], api_rate_per_s=0.001, api_burst=1)
    async with serve(app, key=None) as client:
        token = await add_key(app.state.keys, collections=["users"])
        first = await client.get("/v1/collections/users/records/id/u-1", headers=bearer(token))
        missing = await client.get("/v1/collections/users/records/id/nobody", headers=bearer(token))
        other = await client.get("/v1/collections/nope/records/id/u-1", headers=bearer(token))
    assert first.status_code == 200
    assert missing.status_code == 429
    assert other.status_code == 429
    assert int(missing.headers["retry-after"]) >= 1


async def test_an_authenticate_override_is_honoured() -> None:
    app = await app_with(["u-1"])
    app.dependency_overrides[authenticate] = lambda request: _reader()
    async with serve(app, key=None) as client:
        answer = await client.get("/v1/collections/users/records/id/u-1")
    assert answer.status_code == 200


async def _reader() -> Principal:
    return Principal("override", collections=frozenset({"users"}))


async def test_admitted_settles_the_charge_even_when_the_route_fails() -> None:
    app = await app_with([], api_rate_per_s=0.001, api_burst=2)
    async with serve(app, key=None) as client:
        token = await add_key(app.state.keys, collections=["users"])
        statuses = [
            (
                await client.get("/v1/collections/users/records/id/x", headers=bearer(token))
            ).status_code
            for _ in range(3)
        ]
    assert statuses == [404, 404, 429]  # the two failed reads took their tokens


REFUSED = "cannot connect to Redis: [Errno 111] Connection refused"


class UnreachableStore(MemoryProfileStore):
    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        raise RespConnectionError(REFUSED)


async def test_an_unreachable_store_is_a_503_with_retry_after() -> None:
    app = create_app(Settings(), store=UnreachableStore(), keys=MemoryKeyStore())
    async with serve(app) as client:
        answer = await client.get("/v1/collections/users/records/id/u-1")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": f"profile store unavailable: {REFUSED}"}


async def test_admitted_yields_the_principal() -> None:
    app = await app_with([])
    seen: list[Principal] = []

    router = APIRouter(route_class=DirectRoute)

    @router.get("/whoami")
    async def whoami(request: Request) -> Response:
        async with admitted(request) as principal:
            seen.append(principal)
            return Response(principal.key_id.encode())

    app.router.routes.extend(router.routes)
    async with serve(app) as client:
        answer = await client.get("/whoami")
    assert answer.status_code == 200
    assert len(seen) == 1
    assert seen[0].admin
    assert answer.text == seen[0].key_id
