"""POST /{database}/{table}: Treasure Data's Personalization API.

One call ingests an event and answers with the offers the customer qualifies for. Its
contract is TD's: `Content-Type: application/vnd.treasuredata.v1+json` (else 415),
`Authorization: TD1 {account_id}/{apikey}` (the API key is a traitflow API key, whose
rate limit applies: 429) and `WP13n-Token: {account_id}/{instance_id}/{token}`, and
TD's error codes, each a 400 `{"error": message, "code": n}` with TD's message.

The key is checked as on the other routes (`api.auth.admit_key`), so that a client
sending bad keys here costs Redis no more than there: unknown ids are remembered,
failed authentications limited per client address, and the charge is sent before
anything is published or read (a throttled call costs Redis the charge alone).

The route is the API's last (`api.routes`) and its path matches any two-segment POST,
so a path whose `database` no service has is answered the API's own 404 before any of
TD's checks: a mistyped route is told it does not exist, not to change its content
type. A known database keeps TD's contract whole, a table no service has included
(3001: the token is not for that path).

The body becomes a `track` event (`attributes.offers.call_event`), checked as the
worker will check it and published to the service's ingest topic; the worker
computes it like any other. Read-your-write: the call then waits, at most the
service's `wait_ms`, until the worker has applied that very event (its `messageId`
is in the profile store's dedupe record, written in the same commit as the view),
so the offers reflect the event just sent; `X-Event-Applied` says whether they do
(`true`, `timeout`, or `not-waited` when `wait_ms` is 0 or deduplication is off).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParameter
from starlette.exceptions import HTTPException

from api.auth import admit_key, failed, settle
from api.gate import Charge
from api.keys import ApiKey, parse_token
from api.publisher import PublishFailed
from api.shapes import decode_view
from api.state import ApiState, services
from api.td_services import Registry
from attributes.errors import InputError
from attributes.events import InvalidEvent, decode_event, iso_from_ms
from attributes.offers import (
    CONTENT_TYPE,
    NAME,
    InvalidEventObject,
    Service,
    allowed,
    call_event,
    offers_for,
    parse_rt_token,
    parse_td1,
)
from traitflow.store import ProfileStore

router = APIRouter()

#: TD's error codes and their messages, as its reference lists them
MESSAGES = {
    3000: "RT token was not provided (WP13n-Token header).",
    3001: "RT token is not in configuration.",
    3002: "RT token account conflicts with Authed user account.",
    3003: "RT token is in an invalid format.",
    3004: "Invalid event object.",
    3005: "Request origin not in IP whitelist.",
}
#: how often a read-your-write wait asks whether the event was applied
POLL_S = 0.002


class TdRefusal(InputError):
    """A call refused: its status, TD's code (None where TD has none) and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    @classmethod
    def td(cls, code: int, detail: str | None = None) -> TdRefusal:
        message = MESSAGES[code] if detail is None else f"{MESSAGES[code]} {detail}"
        return cls(400, message, code)

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.message}
        if self.code is not None:
            body["code"] = self.code
        return Response(
            orjson.dumps(body),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


async def _known_database(state: ApiState, database: str) -> bool:
    """Whether some service, configured or made through the API, has `database`."""
    registry: Registry = await state.personalization.registry()
    return any(service.spec.database == database for service in registry.services.values())


def _content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != CONTENT_TYPE:
        raise TdRefusal(415, f"Content-Type should be {CONTENT_TYPE}")


def _unauthorized(message: str) -> TdRefusal:
    return TdRefusal(401, message)


async def _caller(request: Request) -> tuple[str, ApiKey, Charge]:
    """The `TD1` account, a valid API key (401 otherwise) and the key's charge, not sent
    yet; checked before the token: a caller without a key learns nothing about which
    tokens exist. The key is checked as on every other route (`api.auth.admit_key`):
    unknown ids remembered, failures counted per client address (429 past them), so
    that bad keys cost Redis no lookup each."""
    authorization = parse_td1(request.headers.get("authorization", ""))
    if authorization is None:
        raise failed(
            request, "send the header 'Authorization: TD1 {account_id}/{apikey}'", _unauthorized
        )
    account, apikey = authorization
    parsed = parse_token(apikey)
    if parsed is None:
        raise failed(request, "invalid API key", _unauthorized)
    key, charge = await admit_key(request, *parsed, unauthorized=_unauthorized)
    return account, key, charge


async def _service(
    request: Request, state: ApiState, account: str, path: tuple[str, str]
) -> Service:
    """The service the call's token names (`path`: its database and table), in TD's
    order of checks."""
    header = request.headers.get("wp13n-token")
    if not header:
        raise TdRefusal.td(3000)
    token = parse_rt_token(header)
    if token is None:
        raise TdRefusal.td(3003)
    if account != token.account_id:
        raise TdRefusal.td(3002)
    registry: Registry = await state.personalization.registry()
    service = registry.service_of(token)
    if service is None or (service.spec.database, service.spec.table) != path:
        raise TdRefusal.td(3001)
    if not allowed(service, request.client.host if request.client else None):
        raise TdRefusal.td(3005)
    return service


async def _charge(request: Request, key: ApiKey, charge: Charge, entity: str) -> None:
    """The key may read the service's entity (403) and is within its rate limit (429,
    `api.auth.settle`, counted as every route's). Sent before the call publishes or
    reads anything: a throttled call costs Redis its charge alone."""
    readable = [c for c, e in services(request).settings.collections.items() if e == entity]
    if not key.admin and not key.collections.intersection(readable):
        raise TdRefusal(403, f"this API key may not read the {entity!r} profiles")
    await settle(request, charge)


async def _applied(
    store: ProfileStore, entity: str, message: tuple[str, str], wait_s: float
) -> bool:
    """Whether the worker applied `message` within `wait_s` (polled)."""
    deadline = time.monotonic() + wait_s
    while True:
        if await store.applied(entity, [message]):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)


@router.post(
    "/{database}/{table}",
    summary="Ingest an event and get offers (Treasure Data Personalization API shape)",
    responses={
        200: {
            "description": "the offers whose entry criteria the customer meets",
            "content": {
                "application/json": {
                    "example": {
                        "offers": {
                            "offer_for_high_loyalty": {
                                "attributes": {"status": "high"},
                                "batch_segments": [{"id": "1588214"}],
                            }
                        }
                    }
                }
            },
        },
        400: {"description": 'TD\'s error codes 3000-3005: `{"error": ..., "code": 3001}`'},
        401: {"description": "no or an invalid `Authorization: TD1` API key"},
        404: {
            "description": 'a database no service has: `{"error": "Not Found"}`, before '
            "any other check (a name no service can have: 400)"
        },
        415: {"description": f"a content type other than {CONTENT_TYPE}"},
        429: {"description": "the API key's rate limit, with Retry-After"},
    },
)
async def personalize(
    request: Request,
    # a name no service can have is refused before anything else (400): what the API
    # fuzzer sends as invalid input; a valid name of no service's database is a 404
    database: str = PathParameter(pattern=NAME, examples=["p13n_db"]),
    table: str = PathParameter(pattern=NAME, examples=["customer_info_table"]),
) -> Response:
    if not await _known_database(services(request), database):
        # counted as the unknown path it is (`<unmatched>`), not as this route
        request.scope.pop("route", None)
        raise HTTPException(404)
    try:
        return await _personalize(database, table, request)
    except TdRefusal as refusal:
        return refusal.response()


async def _personalize(database: str, table: str, request: Request) -> Response:
    _content_type(request)
    state = services(request)
    account, key, charge = await _caller(request)
    try:
        service = await _service(request, state, account, (database, table))
    except TdRefusal:
        # a refused token is charged to the key too: else a valid key could guess
        # WP13n tokens without limit (past its rate: 429, as any other call)
        await settle(request, charge)
        raise
    spec = service.spec
    await _charge(request, key, charge, spec.entity)
    settings = state.settings
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise TdRefusal.td(3004, "The body is not JSON.") from None
    message_id = uuid.uuid4().hex
    try:
        call = call_event(
            service,
            body,
            message_id=message_id,
            timestamp=iso_from_ms(int(time.time() * 1000)),
            max_id_length=settings.max_id_length,
        )
        raw = orjson.dumps(call.event)
        event = decode_event(raw, settings.event_limits)  # as the worker will
    except (InvalidEventObject, InvalidEvent) as exc:
        raise TdRefusal.td(3004, str(exc)) from None
    lookups = state.identities[spec.entity].extract(event)
    if not lookups:
        raise TdRefusal.td(3004, f"No identifier of a {spec.entity!r} profile.")
    topic = spec.topic or next(iter(settings.sources))
    try:
        await state.publisher.publish(topic, call.key.encode(), raw)
    except PublishFailed:
        raise TdRefusal(
            503, "event broker unavailable; try again", headers={"Retry-After": "1"}
        ) from None
    applied = "not-waited"
    if spec.wait_ms and settings.dedupe_window_s:
        message = (settings.sources[topic], message_id)
        done = await _applied(state.store, spec.entity, message, wait_s=spec.wait_ms / 1000)
        applied = "true" if done else "timeout"
    views = await state.store.read_views(spec.entity, lookups)
    found = next((view for view in views if view is not None), None)
    answer = offers_for(service, None if found is None else decode_view(found))
    return Response(
        orjson.dumps(answer), media_type="application/json", headers={"X-Event-Applied": applied}
    )
