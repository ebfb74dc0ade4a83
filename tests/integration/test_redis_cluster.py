"""The local Redis Cluster the cluster tests run on (`tests/integration/cluster.py`):
three masters that cover every slot, and a slot that `move_slot` moves, keys and all.

The cluster tests run in `make test` (the `cluster` marker is not excluded): a cluster
starts in a few seconds and the file takes well under a minute. `pytest -m cluster`
runs them alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible, command

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_three_masters_cover_every_slot(cluster: LocalCluster) -> None:
    client = cluster.client(0)
    try:
        info = command(client, "CLUSTER", "INFO").decode()
        ranges = command(client, "CLUSTER", "SLOTS")
    finally:
        client.close()
    assert "cluster_state:ok" in info
    assert "cluster_slots_assigned:16384" in info
    assert len({int(master[1]) for _, _, master, *_ in ranges}) == MASTERS


def test_a_slot_moves_with_its_keys(cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        slot = int(key_slot(b"{fixture}"))
        client.mset({f"{{fixture}}:{n}": n for n in range(500)})
        source = cluster.owner(slot)
        target = (source + 1) % MASTERS
        cluster.move_slot(slot, target)
        assert cluster.owner(slot) == target
        # the old owner redirects, the new one holds every key
        old = cluster.client(source)
        with pytest.raises(redis.exceptions.MovedError):
            old.get("{fixture}:1")
        old.close()
        new = cluster.client(target)
        assert command(new, "CLUSTER", "COUNTKEYSINSLOT", slot) == 500
        new.close()
        assert client.get("{fixture}:499") == b"499"
    finally:
        client.close()
