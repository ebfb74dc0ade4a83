"""`TRAITFLOW_REDIS_SYNC` on the spread layout (docs/redis-cluster.md, option B): a
batch's writes are on every master that serves a bucket, so the wait of
`traitflow.durability` is made on each of them, all at once.

WAIT and WAITAOF wait for the writes of the connection they are sent on, and a node
has one replication stream and one AOF: so, as on one Redis, a marker is written
first on the same connection, and once it is on the replicas (or the disk) so is
every write the node took before it. The marker of a node must be a key of a slot
it serves: it is `KeyLayout.sync_marker` under the tag of the first bucket the node
serves (by the client's slot map). A slot that moved meanwhile makes that SET fail
(MOVED): the wait fails, the batch is retried, and the map is read again.

Which nodes: every master that serves a bucket, not only those the batch wrote to
(a batch of more than a few people writes to every node; the store does not keep
track of which ones it wrote): a node not written waits for its marker only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

from traitflow.durability import NotDurable, Sync, config_of, fsync_problem, has_waitaof
from traitflow.redis_client import Redis, RedisTarget
from traitflow.spread_layout import SpreadLayout


class SpreadDurabilityWait:
    """Waits, after each batch, until its writes are as durable as `sync` says on every
    node (a client of its own: the waits block nothing else)."""

    def __init__(
        self, client: RedisCluster, layout: SpreadLayout, sync: str, timeout_s: float
    ) -> None:
        self.client = client
        self.layout = layout
        self.mode = Sync.parse(sync)
        self.timeout_ms = max(1, int(timeout_s * 1000))
        #: node name -> whether it has WAITAOF; asked again after any failure
        self._waitaof: dict[str, bool] = {}

    @classmethod
    def from_url(
        cls, url: Redis, prefix: str, buckets: int, sync: str, timeout_s: float
    ) -> SpreadDurabilityWait:
        target = RedisTarget.of(url)
        client = RedisCluster.from_url(
            target.bare_url,
            **target.redis_py_kwargs(),
            socket_timeout=timeout_s + 5.0,
            socket_connect_timeout=5.0,
        )
        return cls(client, SpreadLayout.of(prefix, buckets), sync, timeout_s)

    @property
    def waits(self) -> bool:
        return self.mode.kind != "none"

    async def markers(self) -> dict[str, tuple[ClusterNode, str]]:
        """Node name -> (the node, its marker key): every master serving a bucket."""
        manager = self.client.nodes_manager
        if not manager.slots_cache:
            await self.client.initialize()
        found: dict[str, tuple[ClusterNode, str]] = {}
        for bucket in range(self.layout.buckets):
            node = manager.get_node_from_slot(self.layout.slot(bucket))
            if node.name not in found:
                found[node.name] = (node, self.layout.keys(bucket).sync_marker())
        return found

    async def wait(self) -> None:
        """Return once every write made so far on every node is durable as configured;
        raise `NotDurable` (or a connection's error) naming the nodes that are not."""
        try:
            nodes = list((await self.markers()).values())
            if self.mode.kind == "disk":
                await self._know_waitaof([node for node, _ in nodes])
            pipe = self.client.pipeline()
            for node, marker in nodes:
                pipe.execute_command("SET", marker, str(time.time()))
                pipe.execute_command(*self._wait_command(node), target_nodes=node)
            replies = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._waitaof.clear()
            raise
        short = []
        for (node, _), written, reached in zip(nodes, replies[::2], replies[1::2], strict=True):
            for reply in (written, reached):
                if isinstance(reply, Exception):
                    self._waitaof.clear()
                    raise NotDurable(f"node {node.name}: {reply}") from reply
            if problem := self._short(node, reached):
                short.append(f"{node.name}: {problem}")
        if short:
            raise NotDurable("; ".join(short))

    def _wait_command(self, node: ClusterNode) -> tuple[Any, ...]:
        if self.mode.kind == "replicas":
            return ("WAIT", self.mode.replicas, self.timeout_ms)
        if self._waitaof[node.name]:
            return ("WAITAOF", 1, 0, self.timeout_ms)
        return ("CONFIG", "GET", "appendonly", "appendfsync", "no-appendfsync-on-rewrite")

    def _short(self, node: ClusterNode, reached: Any) -> str | None:
        """Why a node's reply says its writes are not durable yet, or None."""
        seconds = self.timeout_ms / 1000
        if self.mode.kind == "replicas":
            wanted = self.mode.replicas
            if int(reached) < wanted:
                return f"writes reached {int(reached)} of {wanted} replicas within {seconds:g} s"
            return None
        if self._waitaof[node.name]:
            return None if int(reached[0]) >= 1 else f"writes not on disk within {seconds:g} s"
        problem = fsync_problem(config_of(_pairs(reached)))
        if problem is None:
            return None  # every reply already comes after its fsync
        return f"Redis no longer fsyncs every write before replying ({problem}), and has no WAITAOF"

    async def _know_waitaof(self, nodes: list[ClusterNode]) -> None:
        unknown = [node for node in nodes if node.name not in self._waitaof]
        infos = await asyncio.gather(
            *(self.client.info("server", target_nodes=node) for node in unknown)
        )
        for node, info in zip(unknown, infos, strict=True):
            self._waitaof[node.name] = has_waitaof(info)

    async def close(self) -> None:
        await self.client.aclose()


def _pairs(reply: Any) -> dict[Any, Any]:
    """A CONFIG GET reply (a flat list, or a map under RESP3) as a mapping."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
