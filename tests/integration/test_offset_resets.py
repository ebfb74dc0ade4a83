"""Offsets that go backwards: the embedded broker (memory storage) restarts, its topics
start again at offset 0, under offsets the profiles applied. The worker must see the
reset, say so, and apply the new records; before, every one was silently taken for a
redelivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from streams.logs import KEPT, Checkpoint, History
from streams.redis_logs import RedisLogHistory
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.oracle import expected_view
from tests.integration.stitching_support import figure
from tests.integration.workers import alive, own_service, running_api, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Service, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("reset-broker")
    with own_service(Service("broker", directory, "127.0.0.1", free_port())) as service:
        yield service


class Run:
    """Events for a few users of one isolated run, and the oracle's views of them."""

    def __init__(self, own: Settings, name: str) -> None:
        self.own = own
        self.name = name
        self.users = [f"{name}-{n}" for n in range(4)]
        self.events: list[dict[str, Any]] = []

    def make(self, count: int) -> list[dict[str, Any]]:
        start = len(self.events)
        made = [
            {
                "type": "track",
                "event": "Order Completed",
                "userId": self.users[n % len(self.users)],
                "messageId": f"{self.name}-{n}",
                "timestamp": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600 + n)
                ),
                "properties": {"revenue": float(n), "product_id": "sku"},
            }
            for n in range(start, start + count)
        ]
        self.events.extend(made)
        return made

    def all_served(self, api: httpx.Client) -> bool:
        for user in self.users:
            response = api.get(f"/v1/collections/users/records/user_id/{user}")
            mine = [event for event in self.events if event["userId"] == user]
            if response.status_code != 200 or response.json() != expected_view(
                self.own, mine, user
            ):
                return False
        return True


def test_a_broker_that_lost_its_topics_is_a_reset_and_new_records_are_applied(
    settings: Settings, broker: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = f"tfreset-{uuid.uuid4().hex[:8]}"
    own = settings.isolated(
        name,
        kafka_bootstrap=f"127.0.0.1:{broker.port}",
        topic_partitions=2,
        home=tmp_path_factory.mktemp("reset"),
    )
    run = Run(own, name)
    publish = Publisher(own, next(iter(own.sources)))
    with running_api(own, "reset-api") as url:
        token = create_key(own, "reset-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers) as api:
            asyncio.run(ensure_topics(own))
            worker = start_worker(own, "reset-worker-1")
            try:
                publish(run.make(40))
                wait_until(lambda: alive(worker) and run.all_served(api), 60, "the old log")
            finally:
                worker.stop()

            broker.stop()  # memory storage: every topic, offset and group is gone
            broker.start()
            asyncio.run(ensure_topics(own))
            worker = start_worker(own, "reset-worker-2")
            try:
                publish(run.make(12))  # offsets 0.. again, under what the profiles applied
                wait_until(lambda: alive(worker) and run.all_served(api), 60, "the new log")
                log = worker_log(worker)
            finally:
                worker.stop()
    assert "was reset" in log
    assert "below the first one committed" in log or "another record" in log


def test_checkpoints_in_redis_keep_the_birth_and_the_latest(settings: Settings) -> None:
    async def go() -> tuple[History, History, int]:
        client = aioredis.Redis.from_url(settings.redis_url)
        keys = KeyLayout(f"tflogs-{uuid.uuid4().hex[:8]}")
        logs = RedisLogHistory(client, keys)
        try:
            for offset in range(0, (KEPT + 30) * 5, 5):
                await logs.record([("t/0", Checkpoint(offset, 10 + offset, offset % 7))])
            kept = await logs.read("t/0")
            epoch = await logs.restart("t/0", Checkpoint(0, 99, 1))
            return kept, await logs.read("t/0"), epoch
        finally:
            await client.delete(keys.log_checkpoints("t/0"), keys.log_epoch("t/0"))
            await client.aclose()

    kept, restarted, epoch = asyncio.run(go())
    assert kept.epoch == 0
    assert [c.offset for c in kept.checkpoints] == [0, *range(150, (KEPT + 30) * 5, 5)]
    assert kept.checkpoints[1] == Checkpoint(150, 160, 150 % 7)
    assert (epoch, restarted) == (1, History(1, [Checkpoint(0, 99, 1)]))


@pytest.mark.parametrize("down_s", [5, pytest.param(30, marks=pytest.mark.soak)])
def test_a_running_worker_survives_the_broker_stopped_and_restarted_empty(
    settings: Settings,
    broker: Service,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    down_s: int,
) -> None:
    """The worker keeps running while the embedded broker is down (5 s; 30 s in the
    soak run) and comes back without its data (memory storage): once producers send
    again, the new records are applied on top of the old ones, and every profile is
    the oracle's."""
    name = f"tfdown-{uuid.uuid4().hex[:8]}"
    own = settings.isolated(
        name,
        kafka_bootstrap=f"127.0.0.1:{broker.port}",
        topic_partitions=2,
        home=tmp_path_factory.mktemp("down"),
    )
    run = Run(own, name)
    publish = Publisher(own, next(iter(own.sources)))
    with running_api(own, "down-api") as url:
        token = create_key(own, "down-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers) as api:
            asyncio.run(ensure_topics(own))
            worker = start_worker(own, "down-worker")
            try:
                publish(run.make(40))
                wait_until(lambda: alive(worker) and run.all_served(api), 60, "before")
                broker.stop()
                time.sleep(down_s)
                broker.start()
                back = time.monotonic()
                asyncio.run(ensure_topics(own))
                publish(run.make(12))
                wait_until(lambda: alive(worker) and run.all_served(api), 90, "after")
                recovered = time.monotonic() - back
                log = worker_log(worker)
            finally:
                worker.stop()
    assert "was reset" in log
    figure(request, "seconds_from_the_restart_to_every_new_event_served", round(recovered, 1))
