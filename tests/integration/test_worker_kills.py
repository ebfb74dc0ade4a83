"""Workers killed -9 mid-stream, again and again, alone and in pairs with one person's
events on both: every profile ends equal to the batch answer, nothing counted twice.

A kill -9 leaves a batch half-committed (some entities or parts written, offsets not
acked): the restarted worker, or the other one after the rebalance, reads it again.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from streams.processor import ENTITY
from tests.integration.conftest import Publisher, wait_until
from tests.integration.oracle import expected_view
from tests.integration.stitching_support import comparable, figure, person_oracle
from tests.integration.test_stitching_workers import (
    applied,
    assigned,
    counter,
    make_person,
    produce,
    served_views,
)
from tests.integration.workers import start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.services import Daemon, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

WAVES = 4
MAX_KILLS = 3


def kill9(daemon: Daemon) -> None:
    """SIGKILL the worker's process group and wait until it is gone."""
    pid = daemon.pid()
    assert pid is not None, f"{daemon.name} was not running"
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: daemon.pid() is None, timeout=10, what=f"{daemon.name} to die")
    daemon.pid_file.unlink(missing_ok=True)


def random_events(run: str, users: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for n in range(count):
        user = rng.choice(users)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - rng.randrange(86_400)))
        base = {"userId": user, "messageId": f"{run}-{n}", "timestamp": at}
        if rng.random() < 0.5:
            revenue = rng.randrange(100, 9_000) / 100
            properties = {"revenue": revenue, "product_id": f"sku-{rng.randrange(9)}"}
            events.append(
                base | {"type": "track", "event": "Order Completed", "properties": properties}
            )
        else:
            events.append(base | {"type": "page", "properties": {"path": f"/{n % 5}"}})
    return events


def test_one_worker_killed_three_times_mid_stream(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    run = f"tfkill-{uuid.uuid4().hex[:8]}"
    own = settings.isolated(run, topic_partitions=4, batch_size=50, home=tmp_path)
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    users = [f"{run}-{n}" for n in range(40)]
    events = random_events(run, users, 2_000, seed=7)
    worker = start_worker(own, "killed-0")
    try:
        Publisher(own, next(iter(own.sources)))(events)
        for kill in range(1, 4):
            # kill while the stream is being applied: after some progress, before the end
            progress = kill * len(events) // 5
            wait_until(
                partial(reached, redis_client, keys, progress), what=f"progress before kill {kill}"
            )
            kill9(worker)
            worker = start_worker(own, f"killed-{kill}")
        restarted = time.monotonic()
        wait_until(partial(applied, redis_client, keys, len(events)), what="every event")
        figure(
            request, "seconds_to_apply_the_rest_after_the_last_kill", time.monotonic() - restarted
        )
        views = asyncio.run(read_views(own, users))
        for user, view in zip(users, views, strict=True):
            mine = [event for event in events if event["userId"] == user]
            assert view == expected_view(own, mine, user), user
    finally:
        worker.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)


def conflicts(port: int) -> float:
    """The worker's commit conflicts so far (0 while its metrics are not served yet)."""
    try:
        return counter([port], "traitflow_commit_conflicts")
    except httpx.HTTPError:
        return 0.0


def reached(redis_client: redis.Redis, keys: KeyLayout, events: int) -> bool:
    """Whether `events` events are applied at least (each profile's version counts its)."""
    names = list(redis_client.scan_iter(keys.version(ENTITY, "*"), count=1000))
    return (sum(int(v) for v in redis_client.mget(names) if v) if names else 0) >= events


async def read_views(settings: Settings, users: list[str]) -> list[Any]:
    store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
    try:
        raws = await store.read_views(ENTITY, [("user_id", user) for user in users])
        return [None if raw is None else orjson.loads(raw) for raw in raws]
    finally:
        await store.close()


def test_a_stitching_worker_killed_right_after_a_conflict(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two workers, each person's events on both (keyed by whichever id they carry).
    As soon as a worker has had a commit conflict (part of its batch committed, part
    to be computed again), it is killed -9 (up to three times); the other worker and
    the restarts must still make every person the oracle's one profile."""
    own = settings.isolated(
        f"tfkst-{uuid.uuid4().hex[:8]}", topic_partitions=4, batch_size=4, home=tmp_path
    )
    topic = next(iter(own.sources))
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    rng = random.Random(31)
    persons = [make_person(rng, i) for i in range(80)]  # the run's prefix keeps them apart
    stream = [(event, key) for person in persons for event, key in person.events]
    rng.shuffle(stream)
    ports = [free_port(), free_port()]

    def start(name: str, port: int) -> Daemon:
        return start_worker(own.model_copy(update={"worker_metrics_port": port}), name)

    workers = [start("first", ports[0]), start("second", ports[1])]
    try:
        wait_until(
            lambda: all(assigned(worker, topic) for worker in workers),
            timeout=30,
            what="both workers to own partitions",
        )
        seen = [0.0, 0.0]  # each worker process's conflicts when last looked at
        kills = total = 0
        for wave in range(WAVES):  # each applied before the next: caches go stale
            chunk = stream[wave::WAVES]
            total += len(chunk)
            asyncio.run(produce(own, chunk))
            deadline = time.monotonic() + 60
            while not applied(redis_client, keys, total):
                assert time.monotonic() < deadline, f"wave {wave} not applied within 60 s"
                for w, port in enumerate(ports):
                    if kills < MAX_KILLS and conflicts(port) > seen[w]:
                        kill9(workers[w])  # right after its conflict: a redo may be pending
                        kills += 1
                        workers[w] = start(f"victim-{kills}", port)
                        seen[w] = 0.0
                time.sleep(0.02)
        assert kills >= 1, "no worker had a commit conflict to be killed after"
        served = asyncio.run(served_views(own, persons))
        for person, views in zip(persons, served, strict=True):
            expected = person_oracle(own, [e for e, _ in person.events], person.user)
            for view in views:
                assert view is not None, person.user
                assert comparable(orjson.loads(view)) == expected, person.user
        figure(request, "kills_after_a_conflict", kills)
    finally:
        for worker in workers:
            worker.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)
