"""The broker away under a running worker mid-stream: paused (SIGSTOP: hung, or cut
off by the network), or killed -9 and restarted with its data
(`TRAITFLOW_BROKER_STORAGE=disk`), for 5 s, and 30 s in the soak run (which also
stops it gracefully for 30 s). Its data
is kept, so the worker must take up where it was: every profile ends equal to the
batch answer, nothing counted twice, no event a dead letter, no partition taken for
reset. The restart that loses the data (memory storage) is in test_offset_resets.py."""

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
from tests.integration.test_redis_faults import SlowProxy, no_dead_letters
from tests.integration.test_stitching_workers import applied
from tests.integration.test_worker_kills import random_events, reached, read_views
from tests.integration.workers import alive, own_service, skipped_records, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Service, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A Tansu broker of the test's own (never the session's: it is paused or
    restarted), keeping its data on disk."""
    directory = tmp_path_factory.mktemp("own-broker")
    with own_service(Service("broker", directory, port=free_port(), storage="disk")) as service:
        yield service


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("broker-fault-redis")
    with own_service(Service("redis", directory, port=free_port())) as service:
        yield service


@pytest.mark.parametrize(
    ("fault", "down_s"),
    [
        ("pause", 5),
        ("kill", 5),
        pytest.param("pause", 30, marks=pytest.mark.soak),
        pytest.param("kill", 30, marks=pytest.mark.soak),
        pytest.param("stop", 30, marks=pytest.mark.soak),
    ],
)
def test_a_broker_away_mid_stream_loses_nothing(
    settings: Settings,
    own_broker: Service,
    own_redis: Service,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fault: str,
    down_s: int,
) -> None:
    run = f"tfbroker-{uuid.uuid4().hex[:8]}"
    # the worker reaches its Redis through a proxy adding 10 ms each way, so that it
    # is still applying the first events when the broker goes away
    with SlowProxy(own_redis.port, 0.01) as proxy:
        own = settings.isolated(
            run,
            kafka_bootstrap=f"127.0.0.1:{own_broker.port}",
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            topic_partitions=4,
            batch_size=50,
            home=tmp_path,
        )
        direct = own.model_copy(update={"redis_url": f"redis://127.0.0.1:{own_redis.port}/0"})
        recovered, at_fault, again = through_a_broker_fault(own, direct, own_broker, fault, down_s)
    figure(request, "events_applied_when_the_broker_went_away", at_fault)
    figure(request, "seconds_from_the_restart_or_resume_to_every_event_applied", recovered)
    figure(request, "records_read_again_after_it", again)


def applied_so_far(client: redis.Redis, keys: KeyLayout) -> int:
    names = list(client.scan_iter(keys.version("user", "*"), count=1000))
    return sum(int(v) for v in client.mget(names) if v) if names else 0


def through_a_broker_fault(
    own: Settings, direct: Settings, broker: Service, fault: str, down_s: int
) -> tuple[float, int, int]:
    """Run a worker with `own` through `fault` of `broker` mid-stream; check every
    profile (read with `direct`) and the dead letters; return the seconds it took to
    apply the rest, the events applied when the broker went away, and the records the
    worker read again."""
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    client = redis.Redis.from_url(direct.redis_url)
    users = [f"{own.key_prefix}-{n}" for n in range(30)]
    events = random_events(own.key_prefix, users, 2_000, seed=17)
    publish = Publisher(own, next(iter(own.sources)))
    worker = start_worker(own, "broker-fault-worker")
    try:
        publish(events[:1_500])
        wait_until(partial(reached, client, keys, 300), timeout=60, what="progress")
        pid = broker.pid()
        assert pid is not None
        at_fault = applied_so_far(client, keys)
        if fault == "stop":  # Tansu shuts down gracefully: it may serve on for seconds
            broker.stop()
        else:  # SIGSTOP: fetches, commits and heartbeats all hang; SIGKILL: a crash
            os.killpg(pid, signal.SIGSTOP if fault == "pause" else signal.SIGKILL)
        time.sleep(down_s)
        if fault == "pause":
            os.killpg(pid, signal.SIGCONT)
        else:
            wait_until(lambda: broker.pid() is None, timeout=10, what="the broker to end")
            broker.start()
        back = time.monotonic()
        publish(events[1_500:])  # producers resume too
        wait_until(
            lambda: alive(worker) and applied(client, keys, len(events)),
            timeout=120,
            what="every event",
        )
        recovered = time.monotonic() - back
        views = asyncio.run(read_views(direct, users))
        for user, view in zip(users, views, strict=True):
            mine = [event for event in events if event["userId"] == user]
            assert view == expected_view(own, mine, user), user
        no_dead_letters(direct)
        assert "was reset" not in worker_log(worker)  # the same log, continued
    finally:
        worker.stop()
        client.close()
    assert at_fault < 1_500, "the worker was done before the broker went away"
    return round(recovered, 1), at_fault, skipped_records(worker)
