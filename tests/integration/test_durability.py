"""TRAITFLOW_REDIS_SYNC against real redis-servers: the worker waits until a batch's
writes are on Redis's disk or on replicas before its offsets move, refuses at start a
Redis that cannot give it, and a failed wait is not an acknowledged batch.

Redis here is 7.0 (Debian 12): no WAITAOF, so `disk` is what `appendfsync always`
gives; a 7.2+ server takes the WAITAOF path (`traitflow.durability`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import wait_until
from tests.integration.stitching_support import figure
from tests.integration.test_redis_faults import refusal, run_through_a_fault
from traitflow.config import Settings
from traitflow.durability import DurabilityWait, NotDurable, has_waitaof
from traitflow.redis_checks import UnsafeRedis, check_redis
from traitflow.services import Service, free_port

pytestmark = pytest.mark.integration

ALWAYS = ("--appendfsync", "always")


@pytest.fixture
def fsync_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A redis-server of the test's own that fsyncs every write before it replies."""
    service = Service("redis", tmp_path_factory.mktemp("always"), port=free_port(), options=ALWAYS)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def test_a_worker_that_waits_for_the_disk_loses_nothing_when_redis_is_killed(
    settings: Settings, fsync_redis: Service, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """TRAITFLOW_REDIS_SYNC=disk on an `appendfsync always` Redis killed -9 mid-stream:
    what is acknowledged was on the disk, so even a crash of the machine would not have
    lost it; every profile is the oracle's."""
    recovered = run_through_a_fault(settings, fsync_redis, tmp_path, "kill", sync="disk")
    stats = redis.Redis(port=fsync_redis.port).info("commandstats")
    assert stats["cmdstat_config|get"]["calls"] > 0  # the worker checked, batch by batch
    figure(request, "seconds_to_apply_the_rest_after_the_restart", round(recovered, 1))


def test_waiting_for_the_disk_without_waitaof_needs_every_write_fsynced(
    settings: Settings, fsync_redis: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    everysec = Service("redis", tmp_path_factory.mktemp("everysec"), port=free_port())
    everysec.start()
    try:
        lazy = f"redis://127.0.0.1:{everysec.port}/0"
        if has_waitaof(redis.Redis.from_url(lazy).info("server")):
            check_redis(lazy, "disk")  # WAITAOF waits for the fsync itself
            return
        with pytest.raises(UnsafeRedis, match=r"does not have .*\(set appendfsync always\)"):
            check_redis(lazy, "disk")
        own = settings.isolated(f"tfdisk-{uuid.uuid4().hex[:8]}", redis_url=lazy, redis_sync="disk")
        said = refusal(own, "worker")
        assert "TRAITFLOW_REDIS_SYNC=disk needs WAITAOF" in said, said
        assert "appendfsync always" in said, said
    finally:
        everysec.stop()

    url = f"redis://127.0.0.1:{fsync_redis.port}/0"
    check_redis(url, "disk")  # accepted: every reply follows its fsync

    async def go() -> None:
        durable = DurabilityWait.from_url(url, "tfdisk", "disk", 1.0)
        try:
            await durable.wait()
            # reconfigured under a running worker: no batch is acknowledged any more
            await durable.client.config_set("appendfsync", "everysec")
            with pytest.raises(NotDurable, match="no longer fsyncs every write"):
                await durable.wait()
            await durable.client.config_set("appendfsync", "always")
            await durable.wait()
        finally:
            await durable.close()

    asyncio.run(go())


def test_waiting_for_a_replica_before_offsets_move(
    own_redis: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """TRAITFLOW_REDIS_SYNC=replicas:1: the wait returns once a replica has every write
    made before it, by any connection, and fails (the batch is then retried, never
    acked) when no replica gets them."""
    # no AOF of its own: a replica rewrites its AOF after the first sync, and a stop
    # during that rewrite took 15 s once
    replica = Service(
        "redis",
        tmp_path_factory.mktemp("replica"),
        port=free_port(),
        options=("--appendonly", "no"),
    )
    replica.start()
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    try:
        redis.Redis(port=own_redis.port).config_set("repl-diskless-sync-delay", 0)
        redis.Redis(port=replica.port).replicaof("127.0.0.1", own_redis.port)
        wait_until(
            lambda: (
                redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up"
            ),
            what="the replica to be in sync",
        )

        async def go() -> None:
            durable = DurabilityWait.from_url(
                url, f"tfsync-{uuid.uuid4().hex[:8]}", "replicas:1", 1.0
            )
            writer = redis.Redis(port=own_redis.port)  # another connection's write
            try:
                writer.set("tfsync-written", "1")
                await durable.wait()
                assert redis.Redis(port=replica.port).get("tfsync-written") == b"1"
                replica.stop()
                writer.set("tfsync-written", "2")
                with pytest.raises(NotDurable, match="reached 0 of 1 replicas"):
                    await durable.wait()
            finally:
                writer.delete("tfsync-written")
                writer.close()
                await durable.close()

        asyncio.run(go())
    finally:
        replica.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service("redis", tmp_path_factory.mktemp("primary"), port=free_port())
    service.start()
    try:
        yield service
    finally:
        service.stop()
