"""The broker unavailable under a running worker mid-stream: paused (SIGSTOP: hung, or
cut off by the network) for 10 s, and 30 s in the soak run, then resumed. Its data is
kept, so the worker must take up where it was: every profile ends equal to the batch
answer, nothing counted twice, no event a dead letter.

A broker *restarted* with its data is not tested: the embedded Tansu keeps its topics
in memory only (README, "Offsets that go backwards"); the restart that loses them is
tested in test_offset_resets.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Publisher, wait_until
from tests.integration.oracle import expected_view
from tests.integration.stitching_support import figure
from tests.integration.test_redis_faults import no_dead_letters
from tests.integration.test_stitching_workers import applied
from tests.integration.test_worker_kills import random_events, reached, read_views
from tests.integration.workers import alive, skipped_records, start_worker
from traitflow.config import Settings
from traitflow.services import Service, free_port
from traitflow.store import KeyLayout
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A Tansu broker of the test's own (never the session's: it is paused)."""
    service = Service("broker", tmp_path_factory.mktemp("own-broker"), port=free_port())
    service.start()
    try:
        yield service
    finally:
        pid = service.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a paused one would not stop
        service.stop()


@pytest.mark.parametrize("down_s", [10, pytest.param(30, marks=pytest.mark.soak)])
def test_a_broker_paused_mid_stream_loses_nothing(
    settings: Settings,
    own_broker: Service,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    down_s: int,
) -> None:
    run = f"tfbroker-{uuid.uuid4().hex[:8]}"
    own = settings.isolated(
        run,
        kafka_bootstrap=f"127.0.0.1:{own_broker.port}",
        topic_partitions=4,
        batch_size=50,
        home=tmp_path,
    )
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    client = redis.Redis.from_url(own.redis_url)
    users = [f"{run}-{n}" for n in range(30)]
    events = random_events(run, users, 2_000, seed=17)
    publish = Publisher(own, next(iter(own.sources)))
    worker = start_worker(own, "broker-fault-worker")
    try:
        publish(events[:1_500])
        wait_until(partial(reached, client, keys, 300), timeout=60, what="progress")
        pid = own_broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # fetches, commits and heartbeats all hang
        time.sleep(down_s)
        os.kill(pid, signal.SIGCONT)
        back = time.monotonic()
        publish(events[1_500:])  # producers resume too
        wait_until(
            lambda: alive(worker) and applied(client, keys, len(events)),
            timeout=120,
            what="every event",
        )
        recovered = time.monotonic() - back
        views = asyncio.run(read_views(own, users))
        for user, view in zip(users, views, strict=True):
            mine = [event for event in events if event["userId"] == user]
            assert view == expected_view(own, mine, user), user
        no_dead_letters(own)
    finally:
        worker.stop()
        client.close()
    figure(request, "seconds_from_the_resume_to_every_event_applied", round(recovered, 1))
    figure(request, "records_read_again_after_the_pause", skipped_records(worker))
