"""HTTP ingest in the shape of Segment's HTTP Tracking API: an SDK or a server sends
events without a Kafka client.

`POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias`
take one event (the path says its type), `POST /v1/batch` takes `{"batch": [...]}`.
The write key is the Basic auth username with an empty password, as Segment's
(`writeKey` in the body is accepted too, and never published); it names a source
(`TRAITFLOW_WRITE_KEYS`: the key's SHA-256 -> source, so no key is kept in clear), and
the events go to the ingest topic bound to that source, keyed by userId, else
anonymousId, like every producer, so that one profile's events stay in order.

Each event passes the worker's own checks (`attributes.admission`) before the call is
answered, so an event acknowledged here is never dead-lettered for a reason the caller
could have been told: a bad one is a 400 naming the field. A batch is all or nothing:
one bad event refuses the whole call (400 naming each bad event by its index) and
nothing is published, so that a caller never has to work out which events of a
refused call to send again. `200 {"success": true}` is sent only once the broker
acknowledged every event (`api.publisher`); a broker that does not is a 503.

Operable write keys: `traitflow write-key new --source NAME` makes a key
(`new_write_key`) and the `TRAITFLOW_WRITE_KEYS` entry of its digest; every call's
events are counted by source and outcome (`traitflow_ingest_events_total`,
`api.instrumented`), so that an operator sees a client with a wrong key (unauthorized)
or a broker that does not take events (unavailable) without reading logs; and with
`TRAITFLOW_WRITE_KEY_RATE_PER_S` each write key has a token bucket, the one API keys
have (`api.ratelimit`, kept in Redis and shared by every API process), so that one
source cannot flood the topic the others share: past it, a 429 with `Retry-After`.

What the API fills in, as Segment does: `messageId` (a UUID) when the call has none,
`receivedAt` (now), `sentAt` of a batch onto its events, and `timestamp` when the call
has none: `originalTimestamp` corrected by the sender's clock skew (`receivedAt -
sentAt`) when both are given, else `receivedAt`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.errors import ApiError
from api.publisher import KeyValue, PublishFailed
from api.ratelimit import retry_after
from api.state import ApiState, services
from attributes.admission import Admission
from attributes.events import InvalidEvent
from traitflow.config import Settings

router = APIRouter()

#: the Segment calls one route each; `batch` items name theirs in `type`
TYPES = ("track", "identify", "page", "screen", "group", "alias")
SUCCESS = orjson.dumps({"success": True})
#: bad events a refused batch names at most
MAX_PROBLEMS = 10
#: seconds a 503 asks the caller to wait before sending again
RETRY_AFTER_S = "1"
#: what a fresh write key starts with (`new_write_key`): a leaked one is recognisable
WRITE_KEY_PREFIX = "wk_"
#: the metric's source of a call refused before a write key named one
UNKNOWN_SOURCE = "<unknown>"
#: the metric's outcome of a call refused with each status (any other 4xx: rejected)
OUTCOMES = {401: "unauthorized", 429: "rate_limited", 503: "unavailable"}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Basic realm="traitflow"'})


def write_key_of(header: str | None, body: dict[str, Any]) -> str:
    """The write key: the Basic auth username, else the body's `writeKey`."""
    if header:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            raise _unauthorized("write key expected as Basic auth: 'Authorization: Basic ...'")
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _unauthorized("malformed Basic auth: expected base64 of '<write key>:'") from None
        key = decoded.partition(":")[0]
    else:
        found = body.get("writeKey")
        key = found if isinstance(found, str) else ""
    if not key:
        raise _unauthorized("missing write key: send it as the Basic auth username")
    return key


def hash_write_key(key: str) -> str:
    """What `TRAITFLOW_WRITE_KEYS` holds of a key: its SHA-256, hex (a key this random
    needs no slow, salted hash: there is nothing to guess from the digest)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_write_key() -> tuple[str, str]:
    """A fresh write key and its digest: the only time the key exists in full."""
    key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
    return key, hash_write_key(key)


@dataclass(frozen=True, slots=True)
class Writer:
    """A configured write key: its digest, its source and the source's ingest topic."""

    digest: str
    source: str
    topic: str


def writer_of(settings: Settings, key: str) -> Writer:
    """What `key` is configured as; 401 for a key not configured."""
    digest = hash_write_key(key)
    source = settings.write_keys.get(digest)
    if source is None:
        raise _unauthorized("invalid write key")
    # settings are validated: the source is bound to exactly one ingest topic
    topic = next(topic for topic, bound in settings.sources.items() if bound == source)
    return Writer(digest, source, topic)


@dataclass(slots=True)
class Call:
    """What the metric counts of one call, filled in as it is handled: its source once
    its write key named one, its events once its body was read, and whether Redis
    failed its rate-limit charge (a 503 the app's handlers answer, `api.errors`)."""

    source: str = UNKNOWN_SOURCE
    events: int = 1
    store_failed: bool = False


async def _counted(
    request: Request, handle: Callable[[Request, Call], Awaitable[Response]]
) -> Response:
    """`handle`'s response, its call's events counted by source and outcome."""
    call = Call()
    metrics = services(request).metrics
    try:
        response = await handle(request, call)
    except ApiError as exc:
        metrics.observe_ingest(call.source, OUTCOMES.get(exc.status, "rejected"), call.events)
        raise
    except Exception:
        if call.store_failed:
            metrics.observe_ingest(call.source, "unavailable", call.events)
        raise
    metrics.observe_ingest(call.source, "accepted", call.events)
    return response


async def _authorized(request: Request, body: dict[str, Any], call: Call) -> Writer:
    """The call's write key (401 unless configured), within its rate limit (429)."""
    state = services(request)
    settings = state.settings
    writer = writer_of(settings, write_key_of(request.headers.get("authorization"), body))
    call.source = writer.source
    rate = settings.write_key_rate_per_s
    if rate is not None:
        burst = settings.write_key_burst or max(1, math.ceil(2 * rate))
        try:
            # the API keys' bucket (`tf:r:{id}`); no API key id has a `.` in it
            wait = float(await state.keys.charge(f"wk.{writer.digest}", rate, burst))
        except Exception:
            call.store_failed = True
            raise
        if wait > 0:
            raise ApiError(
                429,
                "rate limit exceeded for this write key; try again later",
                headers={"Retry-After": retry_after(wait)},
            )
    return writer


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _moment(event: dict[str, Any], field: str) -> datetime | None:
    value = event.get(field)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidEvent(f"{field}: not an ISO 8601 date-time: {value!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _given(event: dict[str, Any], field: str) -> bool:
    """Whether `field` has a value that is not blank (the worker strips ids)."""
    value = event.get(field)
    return value is not None and str(value).strip() != ""


def filled(event: dict[str, Any], received: datetime) -> dict[str, Any]:
    """`event` with what Segment's API fills in (module docstring); raises
    `InvalidEvent` for a field Segment requires of its type and it lacks."""
    kind = event.get("type")
    if kind not in TYPES:
        raise InvalidEvent(f"type: must be one of {', '.join(TYPES)}, not {kind!r}")
    if not (_given(event, "userId") or _given(event, "anonymousId")):
        raise InvalidEvent("userId or anonymousId is required")
    required = {"track": "event", "group": "groupId", "alias": "previousId"}.get(kind)
    if required is not None and not _given(event, required):
        raise InvalidEvent(f"{required} is required in a {kind} call")
    if kind == "alias" and not _given(event, "userId"):
        raise InvalidEvent("userId is required in an alias call")
    event.pop("writeKey", None)
    if event.get("messageId") is None:
        event["messageId"] = str(uuid.uuid4())
    event["receivedAt"] = _iso(received)
    if event.get("timestamp") is None:
        original, sent = _moment(event, "originalTimestamp"), _moment(event, "sentAt")
        moment = received - (sent - original) if original and sent else received
        event["timestamp"] = _iso(moment)
    return event


def record_of(event: dict[str, Any], admission: Admission, now_ms: int) -> KeyValue:
    """The record to publish for one filled event, once the worker's checks passed."""
    value = msgspec.json.encode(event)
    admission.admit(value, now_ms=now_ms, fallback_ms=now_ms)
    key = event["userId"] if _given(event, "userId") else event["anonymousId"]
    return str(key).strip().encode(), value


def _admission(request: Request) -> Admission:
    return _admission_of(services(request))


@functools.lru_cache(maxsize=16)
def _admission_of(state: ApiState) -> Admission:
    """The worker's checks over the app's entities and limits: made once per app."""
    return Admission(state.identities, state.settings.event_limits)


async def _body(request: Request) -> dict[str, Any]:
    # msgspec, not orjson: an integer past 64 bits stays one (and is refused by
    # name, as the worker would) instead of becoming a float
    try:
        body = msgspec.json.decode(await request.body())
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


async def _publish(request: Request, topic: str, records: list[KeyValue]) -> Response:
    try:
        await services(request).publisher.publish_batch(topic, records)
    except PublishFailed:
        raise ApiError(
            503, "event broker unavailable; try again", headers={"Retry-After": RETRY_AFTER_S}
        ) from None
    return Response(SUCCESS, media_type="application/json")


async def _one(request: Request, call: Call, kind: str) -> Response:
    body = await _body(request)
    topic = (await _authorized(request, body, call)).topic
    body["type"] = kind
    received = datetime.now(UTC)
    try:
        record = record_of(filled(body, received), _admission(request), int(time.time() * 1000))
    except InvalidEvent as exc:
        raise ApiError(400, str(exc)) from None
    return await _publish(request, topic, [record])


@router.post("/v1/track")
async def track(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="track"))


@router.post("/v1/identify")
async def identify(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="identify"))


@router.post("/v1/page")
async def page(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="page"))


@router.post("/v1/screen")
async def screen(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="screen"))


@router.post("/v1/group")
async def group(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="group"))


@router.post("/v1/alias")
async def alias(request: Request) -> Response:
    return await _counted(request, functools.partial(_one, kind="alias"))


@router.post("/v1/batch")
async def batch(request: Request) -> Response:
    return await _counted(request, _batch)


async def _batch(request: Request, call: Call) -> Response:
    """All or nothing (module docstring). The batch's `context` and `sentAt` apply to
    each event that has none of its own (its own context keys win)."""
    body = await _body(request)
    events = body.get("batch")
    if isinstance(events, list):
        call.events = len(events)
    topic = (await _authorized(request, body, call)).topic
    if not isinstance(events, list):
        raise ApiError(400, "batch: must be a list of events")
    shared = body.get("context")
    received, now_ms = datetime.now(UTC), int(time.time() * 1000)
    admission = _admission(request)
    records: list[KeyValue] = []
    problems: list[str] = []
    for index, event in enumerate(events):
        try:
            if not isinstance(event, dict):
                raise InvalidEvent("not a JSON object")
            if isinstance(shared, dict):
                own = event.get("context")
                event["context"] = shared | own if isinstance(own, dict) else own or shared
            if body.get("sentAt") is not None:
                event.setdefault("sentAt", body["sentAt"])
            records.append(record_of(filled(event, received), admission, now_ms))
        except InvalidEvent as exc:
            problems.append(f"batch[{index}]: {exc}")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        listed = "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise ApiError(400, f"nothing was accepted: {listed}")
    if not records:
        return Response(SUCCESS, media_type="application/json")
    return await _publish(request, topic, records)
