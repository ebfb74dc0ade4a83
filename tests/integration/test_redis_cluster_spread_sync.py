"""TRAITFLOW_REDIS_SYNC on the spread layout (`traitflow.spread_durability`), against a
local Redis Cluster of its own with a replica per master: the wait is made on every
master at once, returns once each one's replica has every write made before it (by
any connection), and fails naming the master whose replica is gone; `disk` (Redis 7.0
here: no WAITAOF) needs every master to fsync every write, and says which does not.
That the worker waits on it after each batch: `tests/unit/test_spread_settings.py`."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.integration.cluster import LocalCluster, cluster_possible, command
from tests.integration.conftest import wait_until
from tests.integration.test_redis_cluster_spread_worker import BUCKETS
from traitflow.durability import NotDurable
from traitflow.services import Service, free_port
from traitflow.spread_durability import SpreadDurabilityWait
from traitflow.spread_layout import SpreadLayout

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def add_replica(cluster: LocalCluster, master: int, home: Path) -> Service:
    """A replica of master `master`, joined with `redis-cli --cluster add-node`, once
    it is in sync. No AOF of its own (see `test_durability`)."""
    bus, port = free_port(), free_port()
    replica = Service(
        "redis", home, "127.0.0.1", port,
        (
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(bus), "--cluster-node-timeout", "5000",
            "--appendonly", "no",
        ),
    )  # fmt: skip
    replica.start()
    node = cluster.nodes[master]
    cluster.client(master).config_set("repl-diskless-sync-delay", 0)
    subprocess.run(
        ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{port}", f"{node.host}:{node.port}",
         "--cluster-slave", "--cluster-master-id", cluster.node_id(master)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    client = redis.Redis(port=port)
    wait_until(
        lambda: client.info("replication").get("master_link_status") == "up",
        timeout=60,
        what=f"the replica of master {master} to be in sync",
    )
    client.close()
    return replica


@pytest.fixture(scope="module")
def replicated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, list[Service]]]:
    """A cluster of its own: three masters, a replica each (index = master's)."""
    home = tmp_path_factory.mktemp("replicated")
    cluster = LocalCluster(home)
    replicas: list[Service] = []
    try:
        cluster.start()
        replicas += [add_replica(cluster, n, home / f"replica{n}") for n in range(3)]
        cluster.wait_ok()
        yield cluster, replicas
    finally:
        for replica in replicas:
            replica.stop()
        cluster.stop()


def waits(cluster: LocalCluster) -> list[int]:
    """WAIT commands each master has run."""
    counts = []
    for n in range(3):
        client = cluster.client(n)
        counts.append(int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)))
        client.close()
    return counts


def test_the_spread_layouts_wait_is_on_every_master(
    replicated: tuple[LocalCluster, list[Service]],
) -> None:
    cluster, replicas = replicated
    layout = SpreadLayout(f"tfsync-{uuid.uuid4().hex[:6]}", BUCKETS)
    writer = RedisCluster.from_url(cluster.url)  # other connections' writes
    # one key on each master, in a bucket it serves
    written = {cluster.owner(layout.slot(b)): f"{layout.tag(b)}:written" for b in range(BUCKETS)}
    assert sorted(written) == [0, 1, 2]

    async def go() -> None:
        durable = SpreadDurabilityWait.from_url(
            cluster.url, layout.base, BUCKETS, "replicas:1", 1.0
        )
        try:
            before = waits(cluster)
            for key in written.values():
                writer.set(key, "1")
            await durable.wait()
            assert [a - b for a, b in zip(waits(cluster), before, strict=True)] == [1, 1, 1]
            for master, key in written.items():
                replica = redis.Redis(port=replicas[master].port, single_connection_client=True)
                command(replica, "READONLY")
                assert replica.get(key) == b"1", master
                replica.close()
            replicas[1].stop()  # master 1's writes reach no replica now
            for key in written.values():
                writer.set(key, "2")
            with pytest.raises(NotDurable, match="reached 0 of 1 replicas") as failed:
                await durable.wait()
            named = f"127.0.0.1:{cluster.nodes[1].port}"
            assert named in str(failed.value)
            assert all(
                f"127.0.0.1:{cluster.nodes[n].port}" not in str(failed.value) for n in (0, 2)
            )

            disk = SpreadDurabilityWait.from_url(cluster.url, layout.base, BUCKETS, "disk", 1.0)
            try:
                with pytest.raises(NotDurable, match="no longer fsyncs every write") as lazy:
                    await disk.wait()
                assert all(f"127.0.0.1:{node.port}" in str(lazy.value) for node in cluster.nodes)
                for n in range(3):
                    cluster.client(n).config_set("appendfsync", "always")
                await disk.wait()
            finally:
                await disk.close()
        finally:
            await durable.close()
            writer.close()

    asyncio.run(go())
