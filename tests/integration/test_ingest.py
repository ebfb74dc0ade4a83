"""HTTP ingest (`api.ingest`) against the real broker, Redis and worker: an event sent
over HTTP is served as a profile; a bad event is refused with a 400 and never reaches
the topic; a broker that is stopped makes a call a 503, and every call acknowledged
before or after is on the topic once it is back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import user_id, wait_until
from tests.integration.test_pipeline import served
from tests.integration.workers import own_service, running_api
from traitflow.config import Settings
from traitflow.services import Daemon, Service, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

WRITE_KEY = f"wk-{uuid.uuid4().hex}"


def with_write_key(settings: Settings, **changes: Any) -> Settings:
    """`settings` with WRITE_KEY naming the source of its (one) ingest topic."""
    ((_, source),) = settings.sources.items()
    digest = hashlib.sha256(WRITE_KEY.encode()).hexdigest()
    copy = Settings.model_validate(
        settings.model_dump() | {"write_keys": {digest: source}} | changes
    )
    copy._kafka_from_env, copy._redis_from_env = settings._kafka_from_env, settings._redis_from_env
    return copy


def ingest_client(url: str) -> httpx.Client:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Basic {auth}"})


def json(value: bytes | None) -> dict[str, Any] | None:
    """A record's event; None for what is not a JSON object: the session's ingest topic
    is shared, and other tests send it raw garbage on purpose (`test_hostile_input`)."""
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def on_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every event on `topic` now (JSON objects only), read from its start without a
    consumer group."""

    async def read() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        await consumer.start()
        try:
            await consumer.topics()  # the cluster's metadata: the topic's partitions
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
            assert partitions, f"no topic {topic}"
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[dict[str, Any]] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batches = await consumer.getmany(timeout_ms=1000)
                found += [event for rs in batches.values() for r in rs if (event := json(r.value))]
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def ingest_api(settings: Settings) -> Iterator[str]:
    """An API server over the session's broker, Redis and ingest topic, with a write key."""
    with running_api(with_write_key(settings), "ingest-api") as url:
        yield url


def test_an_event_sent_over_http_is_served_as_a_profile(
    worker: Daemon, ingest_api: str, api: httpx.Client, settings: Settings
) -> None:
    user = user_id()
    with ingest_client(ingest_api) as client:
        identify = client.post("/v1/identify", json={"userId": user, "traits": {"plan": "pro"}})
        order = {"userId": user, "event": "Order Completed", "properties": {"revenue": 12.5}}
        tracked = client.post("/v1/track", json=order)
        batch = client.post(
            "/v1/batch",
            json={"batch": [{**order, "type": "track", "properties": {"revenue": 7.5}}]},
        )
    for response in (identify, tracked, batch):
        assert (response.status_code, response.json()) == (200, {"success": True})

    def profile() -> Any:
        record = api.get(f"/v1/collections/users/records/user_id/{user}")
        if record.status_code != 200:
            return None
        body = record.json()
        return body if body["attributes"]["purchase_count"] == 2 else None

    served_profile = wait_until(profile, what="the profile of events sent over HTTP")
    assert served_profile["attributes"]["lifetime_value"] == 20.0
    assert served_profile["traits"]["plan"] == "pro"
    assert served(api, f"/v1/collections/users/records/id/{user}", served_profile["attributes"])


def test_a_bad_event_is_refused_and_never_published(
    worker: Daemon, ingest_api: str, settings: Settings
) -> None:
    user = user_id()
    ((topic, _),) = settings.sources.items()
    with ingest_client(ingest_api) as client:
        bad = client.post("/v1/track", json={"userId": user, "properties": {"marker": "bad"}})
        over = client.post("/v1/track", json={"userId": "u" * 600, "event": "E"})
        batch = client.post(
            "/v1/batch",
            json={
                "batch": [
                    {
                        "type": "track",
                        "userId": user,
                        "event": "E",
                        "properties": {"marker": "bad"},
                    },
                    {"type": "group", "userId": user, "properties": {"marker": "bad"}},
                ]
            },
        )
        good = client.post("/v1/track", json={"userId": user, "event": "Good", "messageId": user})
    assert bad.status_code == 400
    assert "event" in bad.json()["error"]
    assert over.status_code == 400
    assert "TRAITFLOW_MAX_ID_LENGTH" in over.json()["error"]
    assert batch.status_code == 400
    assert "batch[1]: groupId" in batch.json()["error"]
    assert good.status_code == 200
    mine = [e for e in on_topic(settings, topic) if e.get("userId") == user]
    assert [e["messageId"] for e in mine] == [user]  # the good one, acknowledged: on the topic


def test_a_stopped_broker_is_a_503_and_loses_nothing_acknowledged(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("ingest-broker")
    with own_service(Service("broker", directory, port=free_port(), storage="disk")) as broker:
        own = with_write_key(
            settings.isolated(f"ingest-{uuid.uuid4().hex[:6]}"),
            kafka_bootstrap=f"127.0.0.1:{broker.port}",
            ingest_timeout_s=2.0,
        )
        ((topic, _),) = own.sources.items()
        asyncio.run(ensure_topics(own))
        acknowledged: list[str] = []

        def send(client: httpx.Client, n: int) -> httpx.Response:
            mid = f"m-{n}"
            response = client.post(
                "/v1/track", json={"userId": f"u-{n % 5}", "event": "E", "messageId": mid}
            )
            if response.status_code == 200:
                acknowledged.append(mid)
            return response

        with running_api(own, "ingest-fault-api") as url, ingest_client(url) as client:
            for n in range(20):
                assert send(client, n).status_code == 200
            broker.stop()
            wait_until(lambda: broker.pid() is None, timeout=30, what="the broker to end")
            refused = send(client, 100)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert "broker" in refused.json()["error"]
            broker.start()
            tries = iter(range(200, 100_000))
            wait_until(
                lambda: send(client, next(tries)).status_code == 200, what="ingest to resume"
            )
            for extra in range(20):
                assert send(client, 1_000 + extra).status_code == 200
        # the API process is gone: what it acknowledged must be on the topic
        published = {e["messageId"] for e in on_topic(own, topic)}
        assert set(acknowledged) <= published
        assert len(acknowledged) >= 41


def test_a_write_keys_rate_limit_is_a_bucket_in_redis_and_counted(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The API keys' bucket, on a real Redis (its Lua script), under the write key's id;
    the refused call on /metrics."""
    limited = with_write_key(settings, write_key_rate_per_s=0.01, write_key_burst=2)
    ((_, source),) = limited.sources.items()
    with running_api(limited, "ingest-limited-api") as url, ingest_client(url) as client:
        statuses = [
            client.post("/v1/track", json={"userId": user_id(), "event": "E"}).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        metrics = client.get("/metrics").text
    digest = hashlib.sha256(WRITE_KEY.encode()).hexdigest()
    assert redis_client.exists(f"{settings.key_prefix}:r:wk.{digest}") == 1
    counted = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "traitflow_ingest_events_total" and sample.labels["source"] == source
    }
    assert counted == {"accepted": 2.0, "rate_limited": 1.0}
