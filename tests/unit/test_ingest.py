"""HTTP ingest in-process (`api.ingest`): Segment's call shapes, write keys as Basic
auth, the worker's own checks before the call is acknowledged, a batch all or nothing,
and a 503 when the broker does not acknowledge. The publisher is a list here; the real
broker is in tests/integration/test_ingest.py."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from api.publisher import ListPublisher
from api.state import state_of
from tests.unit import api_support
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

WRITE_KEY = "wk-web-1"
OTHER_KEY = "wk-server-1"
SETTINGS = Settings(
    sources={"events-web": "web", "events-server": "server"},
    write_keys={
        hashlib.sha256(WRITE_KEY.encode()).hexdigest(): "web",
        hashlib.sha256(OTHER_KEY.encode()).hexdigest(): "server",
    },
    max_id_length=64,
)


def basic(key: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


@pytest.fixture
async def published() -> ListPublisher:
    return ListPublisher()


@pytest.fixture
async def client(published: ListPublisher) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SETTINGS, store=MemoryProfileStore(), publisher=published)
    async with api_support.serve(app, key=None) as client:
        assert state_of(app).publisher is published
        client.headers.update(basic(WRITE_KEY))
        yield client


def nested(depth: int) -> Any:
    return [nested(depth - 1)] if depth else 1


def events_of(published: ListPublisher) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _, _, value in published.records]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/track", {"userId": "u1", "event": "Order Completed", "properties": {"total": 3}}),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "a@b.c"}}),
        ("/v1/page", {"anonymousId": "a1", "name": "Home"}),
        ("/v1/screen", {"userId": "u1", "name": "Home"}),
        ("/v1/group", {"userId": "u1", "groupId": "acme"}),
        ("/v1/alias", {"userId": "u1", "previousId": "a1"}),
    ],
)
async def test_each_call_is_published_with_its_type_and_acknowledged(
    client: httpx.AsyncClient, published: ListPublisher, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json={**body, "type": "ignored"})
    assert (response.status_code, response.json()) == (200, {"success": True})
    ((topic, key, value),) = published.records
    event = orjson.loads(value)
    assert topic == "events-web"
    assert key == (body.get("userId") or body["anonymousId"]).encode()
    assert event["type"] == path.removeprefix("/v1/")
    assert {k: event[k] for k in body} == body


async def test_the_write_key_names_the_source_topic(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    body = {"userId": "u1", "event": "E"}
    assert (await client.post("/v1/track", json=body, headers=basic(OTHER_KEY))).status_code == 200
    assert [topic for topic, _, _ in published.records] == ["events-server"]


async def test_the_write_key_may_be_in_the_body_and_is_never_published(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    del client.headers["authorization"]
    body = {"writeKey": WRITE_KEY, "userId": "u1", "event": "E"}
    assert (await client.post("/v1/track", json=body)).status_code == 200
    assert "writeKey" not in events_of(published)[0]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("not-a-key"),
        {"Authorization": "Bearer " + WRITE_KEY},
        {"Authorization": "Basic %%%"},
    ],
)
async def test_a_call_without_a_valid_write_key_is_401_and_not_published(
    client: httpx.AsyncClient, published: ListPublisher, headers: dict[str, str]
) -> None:
    del client.headers["authorization"]
    response = await client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert "error" in response.json()
    assert published.records == []


async def test_the_api_fills_message_id_and_times_as_segment_does(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    before = datetime.now(UTC)
    await client.post("/v1/track", json={"userId": "u1", "event": "E"})
    # a sender whose clock is one hour ahead: its originalTimestamp is corrected by it
    sent = before + timedelta(hours=1)
    original = sent - timedelta(minutes=5)
    await client.post(
        "/v1/track",
        json={
            "userId": "u1",
            "event": "E",
            "messageId": "m-1",
            "sentAt": sent.isoformat(),
            "originalTimestamp": original.isoformat(),
        },
    )
    given_at = "2026-01-02T03:04:05Z"
    await client.post("/v1/track", json={"userId": "u1", "event": "E", "timestamp": given_at})
    after = datetime.now(UTC)
    first, skewed, given = events_of(published)
    assert len(first["messageId"]) == 36
    assert skewed["messageId"] == "m-1"
    received = datetime.fromisoformat(first["receivedAt"])
    assert before - timedelta(milliseconds=1) <= received <= after
    assert first["timestamp"] == first["receivedAt"]
    corrected = datetime.fromisoformat(skewed["timestamp"])
    assert corrected == datetime.fromisoformat(skewed["receivedAt"]) - timedelta(minutes=5)
    assert given["timestamp"] == given_at


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/track", {"userId": "u1"}, "event"),
        ("/v1/track", {"event": "E"}, "userId or anonymousId"),
        ("/v1/group", {"userId": "u1"}, "groupId"),
        ("/v1/alias", {"userId": "u1"}, "previousId"),
        ("/v1/alias", {"anonymousId": "a1", "previousId": "a0"}, "userId"),
        ("/v1/track", {"userId": ["u1"], "event": "E"}, "userId"),
        ("/v1/track", {"userId": "u1", "event": "E", "properties": []}, "properties"),
        ("/v1/track", {"userId": "u1", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        (
            "/v1/track",
            {
                "userId": "u1",
                "event": "E",
                "sentAt": 5,
                "originalTimestamp": "2026-01-01T00:00:00Z",
            },
            "sentAt",
        ),
        ("/v1/track", {"userId": "u" * 65, "event": "E"}, "TRAITFLOW_MAX_ID_LENGTH"),
        (
            "/v1/track",
            {"userId": "u1", "event": "E", "timestamp": "2999-01-01T00:00:00Z"},
            "future",
        ),
        ("/v1/track", {"userId": "u1", "event": "E", "properties": {"n": 2**64}}, "properties.n"),
        ("/v1/identify", {"userId": "  ", "traits": {"email": "a@b.c"}}, "userId or anon"),
        (
            "/v1/identify",
            {"userId": "u1", "traits": {"t": nested(40)}},
            "TRAITFLOW_MAX_EVENT_DEPTH",
        ),
    ],
)
async def test_a_bad_event_is_400_naming_the_field_and_not_published(
    client: httpx.AsyncClient, published: ListPublisher, path: str, body: Any, named: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]
    assert published.records == []


@pytest.mark.parametrize("body", [b"{", b"[1]", b"null", b"\xff", b"[" * 60_000])
async def test_a_body_that_is_no_json_object_is_400(
    client: httpx.AsyncClient, published: ListPublisher, body: bytes
) -> None:
    response = await client.post("/v1/track", content=body)
    assert response.status_code == 400
    assert "body" in response.json()["error"]
    assert published.records == []


async def test_a_batch_is_published_in_order_with_its_shared_context(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    body = {
        "batch": [
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
            {"type": "track", "userId": "u1", "event": "E", "context": {"ip": "1.2.3.4"}},
            {"type": "page", "anonymousId": "a1"},
        ],
        "context": {"library": {"name": "x"}, "ip": "9.9.9.9"},
        "sentAt": "2026-12-05T10:00:00Z",
    }
    response = await client.post("/v1/batch", json=body)
    assert (response.status_code, response.json()) == (200, {"success": True})
    events = events_of(published)
    assert [e["type"] for e in events] == ["identify", "track", "page"]
    assert [key for _, key, _ in published.records] == [b"u1", b"u1", b"a1"]
    assert events[1]["context"] == {"library": {"name": "x"}, "ip": "1.2.3.4"}
    assert events[2]["context"] == body["context"]
    assert {e["sentAt"] for e in events} == {body["sentAt"]}


async def test_a_batch_with_a_bad_event_publishes_nothing_and_names_each_bad_one(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    body = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "E"},
            {"type": "track", "userId": "u1"},
            {"type": "delete", "userId": "u1"},
            "no event",
        ]
    }
    response = await client.post("/v1/batch", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "batch[1]: event is required" in error
    assert "batch[2]: type" in error
    assert "batch[3]: not a JSON object" in error
    assert "batch[0]" not in error
    assert published.records == []


@pytest.mark.parametrize("body", [{}, {"batch": {"type": "track"}}])
async def test_a_batch_without_a_list_is_400(
    client: httpx.AsyncClient, published: ListPublisher, body: Any
) -> None:
    response = await client.post("/v1/batch", json=body)
    assert response.status_code == 400
    assert "batch" in response.json()["error"]


async def test_a_broker_that_does_not_acknowledge_is_503(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    published.fail = True
    response = await client.post("/v1/track", json={"userId": "u1", "event": "E"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "broker" in response.json()["error"]
    batch = await client.post("/v1/batch", json={"batch": [{"type": "page", "userId": "u1"}]})
    assert batch.status_code == 503


def test_a_write_key_naming_a_source_of_no_single_topic_is_refused_at_load() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    with pytest.raises(ValueError, match="write_keys"):
        Settings(sources={"a": "web", "b": "web"}, write_keys={digest: "web"})
    with pytest.raises(ValueError, match="write_keys"):
        Settings(write_keys={digest: "nowhere"})
    with pytest.raises(ValueError, match="write_keys"):
        Settings(write_keys={"k": "default"})


async def test_a_blank_user_id_is_keyed_by_the_anonymous_id_and_a_null_message_id_filled(
    client: httpx.AsyncClient, published: ListPublisher
) -> None:
    body = {"userId": "  ", "anonymousId": " a-9 ", "event": "E", "messageId": None}
    assert (await client.post("/v1/track", json=body)).status_code == 200
    ((_, key, value),) = published.records
    assert key == b"a-9"
    assert len(orjson.loads(value)["messageId"]) == 36
