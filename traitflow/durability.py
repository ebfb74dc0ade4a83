"""How durable a batch's Redis writes are before its Kafka offsets are committed.

Why this exists: the worker commits a batch's offsets once Redis has acknowledged its
writes, and a committed offset is never read again. An acknowledged write is in Redis's
memory and, with AOF, in the AOF *file*, but not necessarily on the disk: under
`appendfsync everysec` a crash of the Redis *host* (power, kernel; a killed process
loses nothing, the file is written before the reply) loses up to about a second of
writes whose offsets are already committed, and nothing ever replays them. A failover
to a replica that had not received them loses them the same way.
`TRAITFLOW_REDIS_SYNC` (`Settings.redis_sync`) says what each batch waits for:

- `none`: nothing more than Redis's reply (its own persistence decides).
- `disk`: the batch's writes are fsynced to the AOF. Redis 7.2+ has WAITAOF for that.
  Older servers do not; there `disk` is accepted only when every reply already comes
  after its fsync: `appendonly yes`, `appendfsync always` and
  `no-appendfsync-on-rewrite no` (with `yes`, Redis skips the fsync while it rewrites
  the AOF). That is checked with one CONFIG GET per batch, so a Redis restarted or
  reconfigured otherwise fails the batch instead of letting it be acknowledged.
- `replicas:N`: N replicas have the batch's writes (WAIT N).

WAIT and WAITAOF wait for the writes of the connection they are sent on. So this
module first writes a marker on its own connection: Redis has one AOF and one
replication stream, so the marker comes after every write the batch made, whichever
connection made it, and once it is on disk (or on the replicas) so are they.

A wait that fails raises `NotDurable`, and the worker retries the whole batch, not
only the wait: a Redis that restarted meanwhile may have lost the very writes the wait
was for, and only the batch puts them back (offset watermarks make the retry
idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from attributes.errors import StoreError
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import Redis, async_client

#: what a Redis older than WAITAOF must be set to for `disk`
FSYNC_EVERY_WRITE = {
    "appendonly": "yes",
    "appendfsync": "always",
    "no-appendfsync-on-rewrite": "no",
}


class Durability(Protocol):
    """What the worker waits on after each batch: `DurabilityWait`, or its spread
    layout's twin (`traitflow.spread_durability`), which waits on every node."""

    @property
    def waits(self) -> bool: ...

    async def wait(self) -> None: ...

    async def close(self) -> None: ...


class NotDurable(StoreError):
    """A batch's writes did not reach the disk or the replicas in time (or cannot be
    known to have): the batch must not be acknowledged."""


@dataclass(frozen=True)
class Sync:
    """A parsed `TRAITFLOW_REDIS_SYNC`: `none`, `disk` or `replicas:N`."""

    kind: str
    replicas: int = 0

    @classmethod
    def parse(cls, text: str) -> Sync:
        kind, _, count = text.partition(":")
        if kind in ("none", "disk") and not count:
            return cls(kind)
        if kind == "replicas" and count.isdigit() and int(count) >= 1:
            return cls(kind, int(count))
        raise ValueError(f"TRAITFLOW_REDIS_SYNC must be none, disk or replicas:N, not {text!r}")


def has_waitaof(server: Mapping[str, Any]) -> bool:
    """Whether a Redis with this `INFO server` has WAITAOF (7.2+)."""
    version = str(server.get("redis_version", "0"))
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    return numbers >= (7, 2)


def fsync_problem(config: Mapping[str, str]) -> str | None:
    """Why a Redis with this configuration (CONFIG GET of `FSYNC_EVERY_WRITE`'s keys)
    may reply before a write is fsynced, or None."""
    wrong = [f"{key} {want}" for key, want in FSYNC_EVERY_WRITE.items() if config.get(key) != want]
    return f"set {', '.join(wrong)}" if wrong else None


def sync_problem(
    sync: str,
    server: Mapping[str, Any],
    persistence: Mapping[str, Any],
    config: Mapping[str, str] | None,
) -> str | None:
    """Why a Redis with this `INFO server`, `INFO persistence` and configuration
    (None: CONFIG refused, as managed services do) cannot give what `sync` asks, or
    None. Read at start, so that a worker never runs stalled on an impossible wait."""
    mode = Sync.parse(sync)
    if mode.kind != "disk":
        return None
    version = server.get("redis_version", "?")
    if has_waitaof(server):
        if str(persistence.get("aof_enabled", "1")) == "0":
            return (
                "TRAITFLOW_REDIS_SYNC=disk waits until writes are in the AOF, and this "
                "Redis has none: set appendonly yes"
            )
        return None
    missing = fsync_problem(config) if config is not None else "CONFIG GET refused"
    if missing is None:
        return None  # every reply already comes after its fsync
    return (
        f"TRAITFLOW_REDIS_SYNC=disk needs WAITAOF, which Redis {version} does not have "
        "(7.2+), or a Redis that fsyncs every write before replying: appendonly yes, "
        f"appendfsync always, no-appendfsync-on-rewrite no ({missing}). Upgrade Redis, "
        "set those, or wait for replicas instead (TRAITFLOW_REDIS_SYNC=replicas:1)"
    )


def config_of(reply: Mapping[Any, Any]) -> dict[str, str]:
    """A CONFIG GET reply as text, whether the client decoded it or not."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(key): text(value) for key, value in reply.items()}


async def read_config(client: aioredis.Redis) -> dict[str, str] | None:
    """The settings `fsync_problem` judges, or None where CONFIG is refused."""
    try:
        return config_of(await client.config_get(*FSYNC_EVERY_WRITE))
    except aioredis.ResponseError:
        return None


class DurabilityWait:
    """Waits, after each batch, until its writes are as durable as `sync` says.

    It has a connection of its own (the marker and the wait block nothing else), made
    on first use; `socket_timeout` outlasts the wait so that a slow wait is reported
    as `NotDurable`, not as a broken connection."""

    def __init__(self, client: aioredis.Redis, prefix: str, sync: str, timeout_s: float) -> None:
        self.client = client
        self.mode = Sync.parse(sync)
        self.marker = KeyLayout(prefix).sync_marker()
        self.timeout_ms = max(1, int(timeout_s * 1000))
        #: whether the server has WAITAOF; asked again after any failure (a restarted
        #: server may be another version)
        self._waitaof: bool | None = None

    @classmethod
    def from_url(cls, url: Redis, prefix: str, sync: str, timeout_s: float) -> DurabilityWait:
        """`url`: settings, or a URL alone (`traitflow.redis_client`)."""
        client = async_client(url, socket_timeout=timeout_s + 5.0, socket_connect_timeout=5.0)
        return cls(client, prefix, sync, timeout_s)

    @property
    def waits(self) -> bool:
        return self.mode.kind != "none"

    async def wait(self) -> None:
        """Return once every write made so far (by any connection) is durable as
        configured; raise `NotDurable` (or the connection's error) otherwise."""
        try:
            if self.mode.kind == "replicas":
                await self._wait_replicas(self.mode.replicas)
            elif self.mode.kind == "disk":
                await self._wait_disk()
        except BaseException:
            self._waitaof = None
            raise

    async def _wait_replicas(self, wanted: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.marker, str(time.time()))
            pipe.execute_command("WAIT", wanted, self.timeout_ms)
            _, reached = await pipe.execute()
        if int(reached) < wanted:
            raise NotDurable(
                f"writes reached {int(reached)} of {wanted} replicas within "
                f"{self.timeout_ms / 1000:g} s"
            )

    async def _wait_disk(self) -> None:
        if self._waitaof is None:
            self._waitaof = has_waitaof(await self.client.info("server"))
        if not self._waitaof:
            # every reply comes after its fsync, if Redis is still set so
            config = await read_config(self.client)
            problem = fsync_problem(config) if config is not None else "CONFIG GET refused"
            if problem is not None:
                raise NotDurable(
                    f"Redis no longer fsyncs every write before replying ({problem}), "
                    "and has no WAITAOF"
                )
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.marker, str(time.time()))
            pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
            _, reached = await pipe.execute()
        if int(reached[0]) < 1:
            raise NotDurable(f"writes not on Redis's disk within {self.timeout_ms / 1000:g} s")

    async def close(self) -> None:
        await self.client.aclose()
