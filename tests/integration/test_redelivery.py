"""Re-delivered records change nothing: the offset watermark gives an exactly-once effect.

Delivery is at-least-once, so a worker may be handed records whose effect is already in
Redis (a crash before the commit, a rebalance, an operator resetting the group). Each
profile's state keeps, per input partition, the highest offset applied to it, written in
the same atomic MSET as the attribute states; a record at or below it is skipped.

Here a worker processes a backlog to the end and commits it; it is stopped, the consumer
group's committed offsets are rewound (to the start of some partitions, to the middle of
the others) and a new worker reads those records again. Every stored view and state must
come out byte for byte as before and equal the batch oracle. Events published after the
replay must still be applied: the watermark does not swallow new offsets.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from attributes.profile import decode_state
from tests.integration.conftest import wait_until
from tests.integration.oracle import expected_view
from tests.integration.workers import alive, skipped_records, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 4
USERS = 30
EVENTS = 360
NEW_EVENTS = 60
CATEGORIES = ["books", "garden", "kitchen", "toys"]

Offsets = dict[int, int]  # partition -> offset


class Events:
    """Generated events, kept per user in publishing order (what the oracle folds)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        run = uuid.uuid4().hex[:8]
        self.users = [f"rd-{run}-{i}" for i in range(USERS)]
        self.by_user: dict[str, list[dict[str, Any]]] = {user: [] for user in self.users}
        self.count = 0

    def make(self, n: int) -> list[dict[str, Any]]:
        events = [self._event(self.rng.choice(self.users)) for _ in range(n)]
        for event in events:
            self.by_user[event["userId"]].append(event)
        return events

    def _event(self, user: str) -> dict[str, Any]:
        i = self.count = self.count + 1
        # event times out of publishing order: most_recent/first must go by event time
        ts = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_790_000_000 + self.rng.randrange(86_400))
        )
        event: dict[str, Any] = {"userId": user, "messageId": f"m{i:05d}", "timestamp": ts}
        roll = self.rng.random()
        if roll < 0.35:
            return event | {
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "revenue": self.rng.randrange(100, 50_000) / 100,
                    "product_id": f"sku-{self.rng.randrange(20)}",
                },
            }
        if roll < 0.7:
            return event | {
                "type": "track",
                "event": "Product Viewed",
                "properties": {
                    "product_id": f"sku-{self.rng.randrange(20)}",
                    "category": self.rng.choice(CATEGORIES),
                },
            }
        if roll < 0.9:
            return event | {"type": "page", "properties": {"path": f"/{i % 7}"}}
        return event | {"type": "identify", "traits": {"plan": self.rng.choice(["free", "pro"])}}


async def _produce(settings: Settings, topic: str, events: Iterable[dict[str, Any]]) -> Offsets:
    """Publish `events` keyed by user; return partition -> the offset after the last one
    written (what ListOffsets should answer, but Tansu's answer is not the log end)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, orjson.dumps(e), key=str(e["userId"]).encode())
            for e in events
        ]
        ends: Offsets = {}
        for delivery in sent:
            meta = await delivery
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


def _group_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of the worker's group that never joins it: it only fetches and commits
    offsets (`AIOKafkaAdminClient.list_consumer_group_offsets` fails against Tansu)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,
        enable_auto_commit=False,
    )


async def _committed(settings: Settings, topic: str) -> Offsets:
    """partition -> the group's committed offset (-1: none)."""
    consumer = _group_consumer(settings)
    await consumer.start()
    try:
        offsets = {}
        for p in range(settings.topic_partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            offsets[p] = -1 if offset is None else offset
        return offsets
    finally:
        await consumer.stop()


class _AsFaust(RoundRobinPartitionAssignor):  # type: ignore[misc]  # aiokafka is untyped
    """Round robin under the name of Faust's assignor: a group keeps its protocol on
    Tansu even with no member left, and refuses a member that offers another one."""

    name = "faust"


async def _rewind(settings: Settings, topic: str, offsets: Mapping[int, int]) -> None:
    """Commit `offsets` for the worker's group (which must have no member left), as
    `kafka-consumer-groups --reset-offsets` does.

    Tansu refuses the generation-less commit of a consumer that has not joined (Kafka
    accepts it for an empty group), so this one joins the group, alone (it gets every
    partition), and commits with the generation it gets."""
    session, _, heartbeat = settings.group_timeouts
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,
        enable_auto_commit=False,
        session_timeout_ms=int(session * 1000),
        heartbeat_interval_ms=int(heartbeat * 1000),
        partition_assignment_strategy=(_AsFaust,),
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        tps = {TopicPartition(topic, p): offset for p, offset in offsets.items()}
        deadline = time.monotonic() + 30
        while not set(tps) <= consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no assignment of {sorted(tps)} within 30s")
            await asyncio.sleep(0.05)
        await consumer.commit(tps)
    finally:
        await consumer.stop()


def test_redelivered_offsets_change_nothing_and_new_ones_are_applied(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.isolated(
        f"tfrd-{uuid.uuid4().hex[:8]}",
        topic_partitions=PARTITIONS,
        # small batches: a replay spans many batches and fetch rounds
        batch_size=50,
        home=tmp_path,
    )
    topic = next(iter(settings.sources))
    asyncio.run(ensure_topics(settings))
    keys = KeyLayout(settings.key_prefix)
    events = Events(seed=7)
    users = events.users

    def stored() -> dict[str, tuple[bytes | None, bytes | None]]:
        """user -> (stored view, stored state), as bytes."""
        # the client does not decode responses: values are the stored bytes
        views = cast("list[bytes | None]", redis_client.mget([keys.view("user", u) for u in users]))
        states = cast(
            "list[bytes | None]", redis_client.mget([keys.state("user", u) for u in users])
        )
        return dict(zip(users, zip(views, states, strict=True), strict=True))

    def versions() -> dict[str, int]:
        return {
            u: decode_state(state).version if state else 0 for u, (_, state) in stored().items()
        }

    def applied(worker: Daemon) -> bool:
        """Whether every event published so far is applied, and none twice."""
        alive(worker)
        now = versions()
        twice = [u for u in users if now[u] > len(events.by_user[u])]
        if twice:
            pytest.fail(f"{len(twice)} profiles have more versions than events, e.g. {twice[0]}")
        return all(now[u] == len(events.by_user[u]) for u in users)

    def committed() -> Offsets:
        return asyncio.run(_committed(settings, topic))

    def assert_oracle() -> None:
        now = stored()
        for user in users:
            view, _ = now[user]
            assert view is not None, user
            assert orjson.loads(view) == expected_view(settings, events.by_user[user], user), user

    workers: list[Daemon] = []
    try:
        # 1. a backlog, processed to the end and committed
        ends = asyncio.run(_produce(settings, topic, events.make(EVENTS)))
        assert sorted(ends) == list(range(PARTITIONS)), f"a partition got no records: {ends}"
        assert sum(ends.values()) == EVENTS, "the topic is ours alone"
        first = start_worker(settings, "first")
        workers.append(first)
        wait_until(lambda: applied(first), timeout=60, what="the backlog to be applied")
        first.stop()  # SIGTERM: the worker commits what it acked and leaves the group
        assert "Worker]: Closing event loop" in worker_log(first), "not a graceful stop"
        assert committed() == ends
        before = stored()
        assert_oracle()

        # 2. rewind the group: even partitions to their start, odd ones to their middle
        rewound = {p: 0 if p % 2 == 0 else end // 2 for p, end in ends.items()}
        asyncio.run(_rewind(settings, topic, rewound))
        assert committed() == rewound, "the rewind did not take"
        replayed = sum(ends[p] - rewound[p] for p in ends)

        # 3. a new worker reads them again, and they change nothing: the worker logs each
        # batch's records found at or below their profile's watermark (more than the
        # rewound ones only if an unplanned rebalance made it re-read some again)
        def replayed_unchanged(worker: Daemon) -> bool:
            alive(worker)
            done = skipped_records(worker) >= replayed  # read before the profiles: all of it counts
            now = stored()
            if changed := [u for u in users if now[u] != before[u]]:
                pytest.fail(
                    f"the replay changed {len(changed)} profiles, e.g. {changed[0]}: "
                    f"{before[changed[0]][0]!r} -> {now[changed[0]][0]!r}"
                )
            return done

        second = start_worker(settings, "second")
        workers.append(second)
        wait_until(
            lambda: replayed_unchanged(second),
            timeout=60,
            what=f"the {replayed} re-delivered records to be read again",
        )

        # 4. new offsets, past the watermarks, are applied by the same worker
        new_ends = asyncio.run(_produce(settings, topic, events.make(NEW_EVENTS)))
        assert all(new_ends.get(p, 0) > ends[p] for p in ends), "a partition got no new records"
        wait_until(lambda: applied(second), timeout=30, what="the new events to be applied")
        assert_oracle()
        second.stop()
        assert "Worker]: Closing event loop" in worker_log(second), "not a graceful stop"
        # the replayed records were acked like any others: the group is back at the end
        assert committed() == new_ends
    finally:
        for worker in workers:
            worker.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)
