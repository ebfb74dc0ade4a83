"""Redis faults with a real worker and a real API: an evicting Redis refused at start,
Redis killed -9 and restarted mid-stream, Redis paused (SIGSTOP) for 10 s, a slow
Redis (after each, every profile equals the batch answer, nothing was counted twice and
no event is a dead letter), and every Redis failure on the read path a JSON 503. The
durability waits (`TRAITFLOW_REDIS_SYNC`) are in test_durability.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.dead_letter_support import parked_letters, topic_letters
from tests.integration.oracle import expected_view
from tests.integration.stitching_support import figure
from tests.integration.test_stitching_workers import applied
from tests.integration.test_worker_kills import random_events, reached, read_views
from tests.integration.workers import ROOT, own_service, running_api, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Service, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A redis-server of the test's own (never the session's: it is killed and paused)."""
    directory = tmp_path_factory.mktemp("own-redis")
    with own_service(Service("redis", directory, "127.0.0.1", free_port())) as service:
        yield service


def refusal(own: Settings, *command: str) -> str:
    """What `traitflow COMMAND` with `own` says on stderr as it refuses to start."""
    done = subprocess.run(
        [sys.executable, "-m", "traitflow", *command],
        env=own.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (command, done.stdout, done.stderr)
    return done.stderr


def test_an_evicting_redis_is_refused_by_worker_and_api(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    evicting = Service(
        "redis",
        tmp_path_factory.mktemp("evicting"),
        port=free_port(),
        options=("--maxmemory-policy", "allkeys-lru"),
    )
    evicting.start()
    try:
        url = f"redis://127.0.0.1:{evicting.port}/0"
        own = settings.isolated(f"tfevict-{uuid.uuid4().hex[:8]}", redis_url=url)
        for command in (["worker"], ["api", "--port", str(free_port())]):
            said = refusal(own, *command)
            assert "maxmemory-policy is allkeys-lru" in said, said
            assert "Set maxmemory-policy noeviction" in said, said
    finally:
        evicting.stop()


def no_dead_letters(own: Settings) -> None:
    """Every event of the fault tests is valid: none may end up a dead letter, on the
    topic or parked in Redis."""
    assert topic_letters(own) == []
    assert parked_letters(own) == []


def run_through_a_fault(
    settings: Settings, own_redis: Service, tmp_path: Path, fault: str, sync: str = "none"
) -> float:
    """Publish a stream, inject `fault` into Redis once a fifth of it is applied, and
    check every profile against the oracle; return the seconds from the end of the
    fault to every event applied. `sync`: the worker's TRAITFLOW_REDIS_SYNC."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    run = f"tffault-{uuid.uuid4().hex[:8]}"
    own = settings.isolated(
        run, redis_url=url, topic_partitions=4, batch_size=50, home=tmp_path, redis_sync=sync
    )
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    client = redis.Redis.from_url(url)
    users = [f"{run}-{n}" for n in range(30)]
    events = random_events(run, users, 2_000, seed=11)
    worker = start_worker(own, "fault-worker")
    try:
        Publisher(own, next(iter(own.sources)))(events)
        wait_until(partial(reached, client, keys, len(events) // 5), what="progress")
        pid = own_redis.pid()
        assert pid is not None
        if fault == "kill":
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: own_redis.pid() is None, what="redis to die")
            time.sleep(2)  # the worker meets a Redis that is not there
            own_redis.start()
        else:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(10)
            os.kill(pid, signal.SIGCONT)
        back = time.monotonic()
        wait_until(partial(applied, client, keys, len(events)), timeout=90, what="every event")
        recovered = time.monotonic() - back
        views = asyncio.run(read_views(own, users))
        for user, view in zip(users, views, strict=True):
            mine = [event for event in events if event["userId"] == user]
            assert view == expected_view(own, mine, user), user
        no_dead_letters(own)
        return recovered
    finally:
        worker.stop()
        client.close()


def test_redis_killed_and_restarted_mid_stream_loses_nothing(
    settings: Settings, own_redis: Service, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The embedded Redis writes its AOF before it replies: what a commit was told is
    written survives a kill -9 of the process, so offsets committed after it never
    point past lost writes."""
    recovered = run_through_a_fault(settings, own_redis, tmp_path, "kill")
    figure(request, "seconds_to_apply_the_rest_after_the_restart", round(recovered, 1))


def test_redis_paused_for_ten_seconds_loses_nothing(
    settings: Settings, own_redis: Service, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    recovered = run_through_a_fault(settings, own_redis, tmp_path, "pause")
    figure(request, "seconds_to_apply_the_rest_after_the_pause", round(recovered, 1))


def test_the_api_answers_every_redis_failure_with_a_json_503_and_no_address(
    settings: Settings, own_redis: Service
) -> None:
    """A real API process on a real Redis that runs out of memory, becomes a read-only
    replica, pauses and goes away: each read is a JSON 503 with Retry-After and nothing
    of Redis's address or error text; /readyz names the failing dependency only."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    own = settings.isolated(f"tfapifault-{uuid.uuid4().hex[:8]}", redis_url=url)
    client = redis.Redis.from_url(url)
    token = create_key(own, "fault-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
    path = "/v1/collections/users/records/user_id/nobody"
    with (
        running_api(own, "fault-api") as base,
        httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20
        ) as api,
    ):
        assert api.get(path).status_code == 404  # healthy: no such profile

        def unavailable(why: str) -> None:
            response = api.get(path)
            assert response.status_code == 503, (why, response.text)
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"error": "profile store unavailable; try again"}
            assert str(own_redis.port) not in response.text

        client.config_set("maxmemory", 1)  # the key's rate-limit charge is a write: OOM
        unavailable("out of memory")
        client.config_set("maxmemory", 0)
        client.replicaof("127.0.0.1", free_port())  # a replica of nothing: READONLY
        unavailable("read-only")
        client.replicaof("NO", "ONE")
        assert api.get(path).status_code == 404
        own_redis.stop()
        unavailable("gone")
        ready = api.get("/readyz")  # (an OOM or read-only Redis still answers a PING)
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "failing": ["redis"],
            "error": "redis: connection",
        }
    client.close()


class SlowProxy:
    """A TCP proxy on loopback that delays every chunk it forwards by `delay_s`, in a
    thread of its own: Redis as slow as a far-away or overloaded one."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SlowProxy:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        self.server = started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def test_a_slow_redis_slows_the_worker_and_loses_nothing(
    settings: Settings, own_redis: Service, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every Redis round trip of the worker 20 ms longer each way (the worker reaches
    Redis through the proxy): batches grow, the stream is applied, every profile is the
    oracle's."""
    run = f"tfslow-{uuid.uuid4().hex[:8]}"
    with SlowProxy(own_redis.port, 0.02) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        own = settings.isolated(run, redis_url=url, topic_partitions=4, home=tmp_path)
        asyncio.run(ensure_topics(own))
        keys = KeyLayout(own.key_prefix)
        client = redis.Redis(port=own_redis.port)  # the test reads Redis directly
        users = [f"{run}-{n}" for n in range(30)]
        events = random_events(run, users, 2_000, seed=13)
        worker = start_worker(own, "slow-worker")
        try:
            started = time.monotonic()
            Publisher(own, next(iter(own.sources)))(events)
            wait_until(partial(applied, client, keys, len(events)), timeout=90, what="all")
            figure(request, "seconds_to_apply_2000_events", round(time.monotonic() - started, 1))
            views = asyncio.run(
                read_views(
                    own.model_copy(update={"redis_url": f"redis://127.0.0.1:{own_redis.port}/0"}),
                    users,
                )
            )
            for user, view in zip(users, views, strict=True):
                mine = [event for event in events if event["userId"] == user]
                assert view == expected_view(own, mine, user), user
            no_dead_letters(own)
        finally:
            worker.stop()
            client.close()
