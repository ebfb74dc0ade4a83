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

from attributes.errors import StoreError
from traitflow.durability import FSYNC_EVERY_WRITE, config_of, sync_problem
from traitflow.redis_client import Redis, access_problem, sync_client

log = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"


class UnsafeRedis(StoreError):
    """The Redis traitflow was pointed at could lose its keys; the message says why and
    what to set."""


class RedisRefused(UnsafeRedis):
    """Redis refused traitflow's credentials, its TLS handshake failed, or its ACL user
    may not run what traitflow needs: not transient, so a start stops at once with the
    message (`traitflow.redis_client.access_problem`), which names the settings."""


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


def _config(client: redis.Redis) -> dict[str, str] | None:
    """What `sync_problem` reads of the configuration; None where CONFIG is refused."""
    try:
        return config_of(client.config_get(*FSYNC_EVERY_WRITE))
    except redis.exceptions.ResponseError:
        return None


def check_redis(url: Redis, sync: str = "none", wait_s: float = 10.0) -> None:
    """Raise `UnsafeRedis` if the Redis at `url` (settings, or a URL alone) could evict
    traitflow's keys, or cannot give the durability `sync` asks for, and `RedisRefused`
    at once if it refuses traitflow's credentials or TLS. One that does not answer
    within `wait_s` is only warned about: the worker retries its writes and the API
    answers 503 until it does."""
    client = sync_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                memory = client.info("memory")
                server = client.info("server")
                persistence = client.info("persistence")
                config = _config(client)
                break
            except redis.exceptions.RedisError as exc:
                if refused := access_problem(exc, url):
                    raise RedisRefused(refused) from None
                if time.monotonic() > deadline:
                    log.warning(
                        "Redis not checked (not answering: %r); starting anyway. If it does "
                        "answer: a TLS port wants a rediss:// TRAITFLOW_REDIS_URL, a plain "
                        "one redis:// (the other never answers)",
                        exc,
                    )
                    return
                time.sleep(0.5)
    finally:
        client.close()
    if problem := eviction_problem(memory) or sync_problem(sync, server, persistence, config):
        raise UnsafeRedis(problem)
