"""What traitflow needs of a Redis before it writes to it or serves from it.

A Redis allowed to evict keys under memory pressure drops profiles, index entries and
applied offsets without telling anyone: a dropped state restarts a profile from
nothing, a dropped set of applied messageIds lets retries count twice. Only
`noeviction` is safe (a write then fails with OOM, which the worker retries and the
API answers with 503); the `volatile-*` policies are not, since traitflow's applied
messageIds (and anonymous profiles, if they expire) carry expiries. The policy is read
from `INFO memory`, which managed services answer even where they disable CONFIG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

log = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"


class UnsafeRedis(RuntimeError):
    """The Redis traitflow was pointed at could lose its keys; the message says why and
    what to set."""


def eviction_problem(memory: Mapping[str, Any]) -> str | None:
    """Why a Redis with this `INFO memory` could evict traitflow's keys, or None."""
    policy = memory.get("maxmemory_policy")
    if policy is None or policy == SAFE_POLICY:
        return None
    return (
        f"Redis's maxmemory-policy is {policy}: under memory pressure it would evict "
        "traitflow's profiles, indexes and applied offsets, silently. Set "
        f"maxmemory-policy {SAFE_POLICY} (redis.conf, `CONFIG SET maxmemory-policy "
        f"{SAFE_POLICY}`, or your provider's parameter group); writes then fail with OOM "
        "instead, which traitflow retries and reports"
    )


def sync_problem(server: Mapping[str, Any], sync: str) -> str | None:
    """Why a Redis with this `INFO server` cannot give the durability `sync` asks for
    (`Settings.redis_sync`), or None."""
    version = str(server.get("redis_version", "0"))
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if sync == "disk" and numbers < (7, 2):
        return (
            f"TRAITFLOW_REDIS_SYNC=disk waits with WAITAOF, which Redis {version} does not "
            "have (7.2+). Upgrade Redis, or run it with `appendfsync always` (every write "
            "fsynced before its reply) and TRAITFLOW_REDIS_SYNC=none, or wait for "
            "replicas instead (TRAITFLOW_REDIS_SYNC=replicas:1)"
        )
    return None


def check_redis(url: str, sync: str = "none", wait_s: float = 10.0) -> None:
    """Raise `UnsafeRedis` if the Redis at `url` could evict traitflow's keys, or cannot
    give the durability `sync` asks for. One that does not answer within `wait_s` is
    only warned about: the worker retries its writes and the API answers 503 until it
    does."""
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                memory = client.info("memory")
                server = client.info("server")
                break
            except redis.exceptions.RedisError as exc:
                if time.monotonic() > deadline:
                    log.warning("Redis not checked (not answering: %r); starting anyway", exc)
                    return
                time.sleep(0.5)
    finally:
        client.close()
    if problem := eviction_problem(memory) or sync_problem(server, sync):
        raise UnsafeRedis(problem)
