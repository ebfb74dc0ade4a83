"""Two rebalances mid-stream lose no event and count none twice.

Events keep arriving while a first worker processes them; a second worker joins the
group (partitions move from the first to the second) and then the first one is stopped
gracefully (its partitions move to the second). A batch in progress must finish and be
committed before its partitions move, records fetched but not handed over must be left
for the new owner, and nothing of a partition no longer owned may be applied: at the
end every profile must equal what the batch oracle computes from the same events.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import wait_until
from tests.integration.oracle import expected_view
from tests.integration.workers import alive, skipped_records, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

USERS = 300
CHUNK = 400  # events per send round
CHUNK_EVERY_S = 0.1  # -> up to 4k events/s
BACKLOG = 8_000


class Stream:
    """Publishes generated events (keyed by user) in a background thread until stopped."""

    def __init__(self, settings: Settings, topic: str, seed: int) -> None:
        self.settings = settings
        self.topic = topic
        self.rng = random.Random(seed)
        self.users = [f"rb-{uuid.uuid4().hex[:8]}-{i}" for i in range(USERS)]
        self.events: dict[str, list[dict[str, Any]]] = {user: [] for user in self.users}
        self.sent = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _event(self, i: int) -> dict[str, Any]:
        user = self.rng.choice(self.users)
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_790_000_000 + i))
        roll = self.rng.random()
        event: dict[str, Any] = {"userId": user, "messageId": f"m{i}", "timestamp": ts}
        if roll < 0.6:
            cents = self.rng.randrange(100, 50_000)
            event |= {
                "type": "track",
                "event": "Order Completed",
                "properties": {"revenue": cents / 100, "product_id": f"sku-{i % 50}"},
            }
        elif roll < 0.9:
            event |= {"type": "page", "properties": {"path": f"/{i % 7}"}}
        else:
            event |= {"type": "identify", "traits": {"plan": self.rng.choice(["free", "pro"])}}
        self.events[user].append(event)
        return event

    async def _publish(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            while not self.stop.is_set():
                chunk = [self._event(self.sent + n) for n in range(CHUNK)]
                deliveries = [
                    await producer.send(self.topic, orjson.dumps(e), key=str(e["userId"]).encode())
                    for e in chunk
                ]
                await asyncio.gather(*deliveries)
                self.sent += len(chunk)
                await asyncio.sleep(CHUNK_EVERY_S)
        finally:
            await producer.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_two_rebalances_mid_stream_lose_nothing_and_count_nothing_twice(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = settings.isolated(
        f"tfrb-{run}",
        topic_partitions=8,
        # small batches: many hand-overs per fetch round, so rebalances hit a round
        # with a batch in progress and records fetched but not handed over yet
        batch_size=25,
        home=tmp_path,
        # a session long enough that a worker starved of CPU (CI running beside other
        # work) is not evicted: an eviction is a third, unplanned rebalance whose
        # re-reads are legitimate but would fail the no-re-read check below
        session_timeout_s=6.0,
        rebalance_timeout_s=3.0,
        heartbeat_interval_s=1.0,
    )
    topic = next(iter(settings.sources))
    asyncio.run(ensure_topics(settings))
    keys = KeyLayout(settings.key_prefix)
    first: Daemon | None = None
    second: Daemon | None = None
    try:
        with Stream(settings, topic, seed=11) as stream:
            # a backlog, so that the workers are behind (fetch rounds of many records)
            wait_until(lambda: stream.sent >= BACKLOG, what="a backlog")
            first = start_worker(settings, "first")
            wait_until(
                lambda: alive(first) and any(redis_client.scan_iter(keys.all_keys(), count=100)),
                timeout=30,
                what="the first worker to process events",
            )
            second = start_worker(settings, "second")
            # the join moves partitions: the first worker revokes and gets a new generation
            wait_until(
                lambda: alive(second) and "Worker]: Ready" in worker_log(second),
                timeout=30,
                what="the second worker to get partitions",
            )
            wait_until(
                lambda: "(generation 1)" in worker_log(first),
                timeout=15,
                what="the first worker to see the rebalance",
            )
            time.sleep(1.0)  # both process for a while
            sent_before_stop = stream.sent
            first.stop()  # SIGTERM: leaves the group, its partitions move to the second
            assert "Worker]: Closing event loop" in worker_log(first), "not a graceful stop"
            wait_until(
                lambda: stream.sent >= max(20_000, sent_before_stop + 4 * CHUNK),
                what="events after the stop",
            )
        assert stream.error is None, stream.error

        users = [user for user in stream.users if stream.events[user]]
        expected = {user: expected_view(settings, stream.events[user], user) for user in users}

        def served() -> dict[str, Any]:
            views = redis_client.mget([keys.view("user", user) for user in users])
            return {u: orjson.loads(v) if v else None for u, v in zip(users, views, strict=True)}

        def all_done() -> bool:
            alive(second)
            views = served()
            return all((views[u] or {}).get("version") == len(stream.events[u]) for u in users)

        wait_until(all_done, timeout=30, what="every event to be applied")
        views = served()
        wrong = [u for u in users if views[u] != expected[u]]
        # Graceful hand-overs commit what was applied, so the new owner re-reads almost
        # nothing: at most the batch in flight at each of the two planned rebalances
        # (Faust's revoke may stop waiting for it under load; its records are then
        # re-read and skipped by the offset watermarks). Without the revoke commit of
        # fastfaust, thousands of records were re-read here.
        assert first is not None
        assert second is not None
        reread = skipped_records(first) + skipped_records(second)
        assert reread <= 2 * settings.batch_size, f"{reread} records re-read after hand-overs"
        assert not wrong, (
            f"{len(wrong)} profiles differ, e.g. {views[wrong[0]]} != {expected[wrong[0]]}"
        )
    finally:
        for started in (first, second):
            if started is not None:
                started.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)
