"""`DirectRoute` and `admitted`: documented like any route, called without FastAPI's
per-request machinery; the rate-limit charge settled after the route's read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from starlette.exceptions import HTTPException

from api import errors
from api.app import create_app
from api.auth import Principal, authenticate
from api.direct import DirectApp, DirectRoute, admitted
from api.errors import ApiError
from api.keys import MemoryKeyStore
from api.middleware import BodySizeLimit
from api.state import state_of
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import add_key, bearer, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.resp import RespConnectionError
from traitflow.store import ProfileWrite

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
    assert names == {"collection", "index", "value", "fields", "merge_policy", "provenance"}


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
        token = await add_key(state_of(app).keys, collections=["users"])
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
        token = await add_key(state_of(app).keys, collections=["users"])
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
    assert answer.json() == {"error": "profile store unavailable; try again"}
    assert REFUSED not in answer.text


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


# DirectApp: the direct routes' short path


class Boom(Exception):
    pass


class Teapot(Exception):
    pass


def short_path_app(routes_before: Sequence[Any] = ()) -> DirectApp:
    """A DirectApp with a direct GET and POST route, a plain route, and a recording
    middleware; `routes_before` go ahead of the direct routes."""
    direct = APIRouter(route_class=DirectRoute)
    plain = APIRouter()

    @direct.get("/direct/{name}")
    async def read(name: str, request: Request, fail: str | None = Query(None)) -> Response:
        if fail == "api":
            raise ApiError(404, f"no {name}")
        if fail == "http":
            raise HTTPException(418, "short and stout")
        if fail == "mapped":
            raise Teapot()
        if fail == "bug":
            raise Boom("a bug")
        return Response(f"{name}:{request.scope['route'].path}".encode())

    @direct.post("/direct/{name}")
    async def write(name: str, request: Request) -> Response:
        return Response(b"%d bytes for %s" % (len(await request.body()), name.encode()))

    @plain.get("/plain")
    async def plain_route() -> dict[str, str]:
        return {"plain": "yes"}

    app = DirectApp()
    errors.install(app)
    app.add_exception_handler(Teapot, lambda request, exc: Response(b"teapot", status_code=418))
    app.router.routes.extend([*routes_before, *direct.routes, *plain.routes])
    app.add_middleware(BodySizeLimit, limit=16)
    app.add_middleware(Recorder)
    return app


class Recorder:
    """Middleware that notes each request's path: the app's own middleware runs on the
    short path too."""

    seen: list[str]

    def __init__(self, app: Any) -> None:
        self.app = app
        Recorder.seen = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            Recorder.seen.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that went through FastAPI's router (the full stack)."""
    paths: list[str] = []
    full = APIRouter.__call__

    async def counting(self: APIRouter, scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        await full(self, scope, receive, send)

    monkeypatch.setattr(APIRouter, "__call__", counting)
    return paths


def client(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_direct_routes_skip_the_router_and_others_take_it(routed: list[str]) -> None:
    async with client(short_path_app()) as http:
        read = await http.get("/direct/a")
        written = await http.post("/direct/b", content=b"12345")
        plain = await http.get("/plain")
    assert (read.status_code, read.text) == (200, "a:/direct/{name}")
    assert (written.status_code, written.text) == (200, "5 bytes for b")
    assert plain.json() == {"plain": "yes"}
    assert routed == ["/plain"]
    assert Recorder.seen == ["/direct/a", "/direct/b", "/plain"]


async def test_the_short_path_answers_with_the_apps_exception_handlers(routed: list[str]) -> None:
    async with client(short_path_app()) as http:
        api = await http.get("/direct/a", params={"fail": "api"})
        teapot = await http.get("/direct/a", params={"fail": "http"})
        mapped = await http.get("/direct/a", params={"fail": "mapped"})
    assert (api.status_code, api.json()) == (404, {"error": "no a"})
    assert (teapot.status_code, teapot.json()) == (418, {"error": "short and stout"})
    assert (mapped.status_code, mapped.text) == (418, "teapot")
    assert routed == []


async def test_a_bug_is_a_500_and_reaches_the_server() -> None:
    app = short_path_app()
    async with client(app) as http:
        with pytest.raises(Boom):
            await http.get("/direct/a", params={"fail": "bug"})
    async with client(app, raise_app_exceptions=False) as http:
        answer = await http.get("/direct/a", params={"fail": "bug"})
    assert answer.status_code == 500


async def test_the_apps_middleware_limits_bodies_on_the_short_path(routed: list[str]) -> None:
    async with client(short_path_app()) as http:
        answer = await http.post("/direct/a", content=b"x" * 17)
    assert answer.status_code == 413
    assert routed == []


async def test_what_the_direct_routes_do_not_serve_takes_the_full_stack(
    routed: list[str],
) -> None:
    async with client(short_path_app()) as http:
        wrong_method = await http.put("/direct/a")
        head = await http.head("/direct/a")
        unknown = await http.get("/nowhere")
    assert wrong_method.status_code == 405
    assert head.status_code == 405  # as FastAPI answers HEAD on a GET route
    assert unknown.status_code == 404
    assert routed == ["/direct/a", "/direct/a", "/nowhere"]


async def test_direct_routes_are_tried_first_on_both_paths(routed: list[str]) -> None:
    """A plain route declared first would shadow a direct one in the router; DirectApp
    moves the direct routes ahead, so that its short path answers what the router
    would."""
    shadow = APIRouter()

    @shadow.get("/direct/shadowed")
    async def shadowed() -> dict[str, str]:
        return {"shadowed": "yes"}

    app = short_path_app(shadow.routes)
    async with client(app) as http:
        answer = await http.get("/direct/shadowed")
    assert answer.text == "shadowed:/direct/{name}"
    assert routed == []
    kinds = [isinstance(route, DirectRoute) for route in app.router.routes]
    assert kinds == sorted(kinds, reverse=True)  # the router tries them first too


async def test_an_app_behind_a_root_path_takes_the_full_stack(routed: list[str]) -> None:
    app = short_path_app()
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        answer = await http.get("/api/direct/a")
    assert (answer.status_code, answer.text) == (200, "a:/direct/{name}")
    assert routed == ["/api/direct/a"]


async def test_reads_on_the_short_path_are_in_the_request_metrics() -> None:
    app = await app_with(["u-1"])
    async with serve(app) as client:
        await client.get("/v1/collections/users/records/id/u-1")
        await client.get("/v1/collections/users/records/id/nobody")
        metrics = (await client.get("/metrics")).text
    route = "/v1/collections/{collection}/records/{index}/{value}"
    for status in (200, 404):
        assert (
            f'traitflow_api_requests_total{{method="GET",route="{route}",status="{status}"}} 1.0'
            in metrics
        )
