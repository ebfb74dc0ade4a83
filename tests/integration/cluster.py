"""A local Redis Cluster for integration tests: three masters of Debian's redis-server,
no replicas, on free loopback ports, joined by `redis-cli --cluster create`.

Why three masters: the fewest that make a cluster in which a slot has somewhere to
move (`move_slot`, through `redis-cli --cluster reshard`) and in which a client that
ignores MOVED is seen to fail. No replicas: failover is not what these tests are about,
and each replica costs a process on a two-core machine.

Each node is a `traitflow.services.Service` (the embedded Redis's options, AOF
included) with the cluster options after them; its cluster bus listens on a port of
its own (`--cluster-port`, Redis 7.0), so no node needs its port + 10000 free.

With `tls` (`ClusterTls`), every node listens on a TLS port only (`port 0`), requires
a client certificate, talks TLS on the cluster bus and for replication
(`tls-cluster`, `tls-replication`), and requires `password` if one is given: the
secured cluster that TRAITFLOW_REDIS_CLUSTER with a rediss:// URL is tested against.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from traitflow.services import Service, ServiceError, free_port

#: masters in the cluster (see the module's docstring)
MASTERS = 3


def command(client: redis.Redis, *args: str | int) -> Any:
    """One command on one node (redis-py's `execute_command` is untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def cluster_possible() -> bool:
    """Whether this machine can run the cluster: Debian's redis-server and redis-cli."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@dataclass(frozen=True)
class ClusterTls:
    """The files of a TLS cluster: the CA that signed the nodes' certificate (one, for
    127.0.0.1, also presented on the cluster bus) and a client certificate."""

    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]

    def node_options(self, port: int) -> tuple[str, ...]:
        (cert, key), ca = self.server, self.ca
        return (
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes",
            "--tls-cluster", "yes", "--tls-replication", "yes",
        )  # fmt: skip

    def cli_options(self) -> tuple[str, ...]:
        cert, key = self.client
        return ("--tls", "--cacert", str(self.ca), "--cert", str(cert), "--key", str(key))

    def redis_py_options(self) -> dict[str, Any]:
        cert, key = self.client
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(cert),
            "ssl_keyfile": str(key),
        }


@dataclass
class LocalCluster:
    """The cluster's nodes, started by `start` and stopped by `stop`."""

    home: Path
    nodes: list[Service] = dataclasses.field(default_factory=list)
    #: TLS on every port (None: plain TCP), and the password every node requires
    tls: ClusterTls | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """A seed node's URL (without the password): a cluster client finds the others
        from it."""
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def addresses(self) -> list[str]:
        return [f"{node.host}:{node.port}" for node in self.nodes]

    def client(self, index: int) -> redis.Redis:
        """A plain (not cluster-aware) client of one node."""
        node = self.nodes[index]
        tls = self.tls.redis_py_options() if self.tls is not None else {}
        return redis.Redis(host=node.host, port=node.port, password=self.password, **tls)

    def start(self, timeout: float = 60.0) -> None:
        for n in range(MASTERS):
            bus, port = free_port(), free_port()
            node = Service(
                "redis",
                self.home / f"node{n}",
                "127.0.0.1",
                port,
                (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(bus),
                    "--cluster-node-timeout", "5000",
                    *(self.tls.node_options(port) if self.tls is not None else ()),
                ),
                password=self.password,
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        self._redis_cli(
            "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"
        )
        self.wait_ok(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every node says the cluster is ok and all agree on who owns each slot
        (right after `create` or a reshard, a node may still hold an older map)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                maps = []
                for index in range(len(self.nodes)):
                    client = self.client(index)
                    try:
                        info = command(client, "CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        if "cluster_state:ok" not in text:
                            raise ServiceError(f"node {index}: {text.splitlines()[0]}")
                        maps.append(sorted(map(str, command(client, "CLUSTER", "SLOTS"))))
                    finally:
                        client.close()
                if all(m == maps[0] for m in maps):
                    return
                problem = "the nodes disagree on the slot map"
            except (redis.RedisError, ServiceError) as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise ServiceError(f"the Redis Cluster is not ok after {timeout:.0f}s: {problem}")
            time.sleep(0.1)

    def node_id(self, index: int) -> str:
        client = self.client(index)
        try:
            return str(command(client, "CLUSTER", "MYID").decode())
        finally:
            client.close()

    def owner(self, slot: int) -> int:
        """The index of the node that serves `slot`."""
        client = self.client(0)
        try:
            ranges = command(client, "CLUSTER", "SLOTS")
        finally:
            client.close()
        for start, end, master, *_ in ranges:
            if start <= slot <= end:
                port = int(master[1])
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise ServiceError(f"no node serves slot {slot}")

    def first_slot(self, index: int) -> int:
        client = self.client(0)
        try:
            ranges = command(client, "CLUSTER", "SLOTS")
        finally:
            client.close()
        port = self.nodes[index].port
        return min(int(start) for start, _, master, *_ in ranges if int(master[1]) == port)

    def move_slot(self, slot: int, to: int, *, pipeline: int = 10) -> None:
        """Move `slot`, keys and all, to node `to` with `redis-cli --cluster reshard`.

        reshard takes a count of slots, not a slot: it moves its source's slots from
        the lowest up, so the count is the slots from the source's lowest to `slot`
        (empty slots move in a few commands each). `pipeline`: keys per MIGRATE (the
        smaller, the longer the slot is half-moved)."""
        source = self.owner(slot)
        if source == to:
            raise ServiceError(f"slot {slot} is already on node {to}")
        count = slot - self.first_slot(source) + 1
        self._redis_cli(
            "--cluster", "reshard", self.addresses[source],
            "--cluster-from", self.node_id(source),
            "--cluster-to", self.node_id(to),
            "--cluster-slots", str(count),
            "--cluster-pipeline", str(pipeline),
            "--cluster-yes",
        )  # fmt: skip
        if self.owner(slot) != to:  # a count off by some would leave it behind
            raise ServiceError(f"reshard left slot {slot} on node {self.owner(slot)}")
        self.wait_ok()

    def _redis_cli(self, *args: str) -> str:
        secured = [*(self.tls.cli_options() if self.tls is not None else ())]
        if self.password is not None:  # REDISCLI_AUTH: not on the command line
            secured.append("--no-auth-warning")
        env = os.environ | ({"REDISCLI_AUTH": self.password} if self.password else {})
        done = subprocess.run(
            ["redis-cli", *secured, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise ServiceError(
                f"redis-cli {' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout
