"""A module's own worker over two ingest topics, bound to the sources `web` and `crm`:
what the source and merge-policy tests share (`test_sources`, `test_merge_policies_api`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import orjson
import redis

from tests.integration.conftest import Publisher, wait_until
from tests.integration.workers import alive, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon
from traitflow.topics import ensure_topics


@contextlib.contextmanager
def source_topics(own: Settings, redis_client: redis.Redis) -> Iterator[dict[str, Publisher]]:
    """A publisher per source; every key under `own`'s prefix is removed afterwards."""
    asyncio.run(ensure_topics(own))
    yield {source: Publisher(own, topic) for topic, source in own.sources.items()}
    for key in redis_client.scan_iter(KeyLayout(own.key_prefix).all_keys(), count=10_000):
        redis_client.unlink(key)


@contextlib.contextmanager
def two_source_worker(
    own: Settings, topics: dict[str, Publisher], redis_client: redis.Redis, name: str
) -> Iterator[Daemon]:
    """A real worker with `own`, yielded once it has consumed both topics."""
    daemon = start_worker(own, name)
    try:
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        for source in ("web", "crm"):  # both topics consumed before a test relies on it
            topics[source]([{"type": "identify", "userId": probe, "traits": {source: True}}])
        key = KeyLayout(own.key_prefix).view("user", probe)

        def ready() -> bool:
            raw = redis_client.get(key) if alive(daemon) else None
            return isinstance(raw, bytes) and orjson.loads(raw)["version"] == 2

        wait_until(ready, timeout=90, what="the worker to process both topics")
        yield daemon
    finally:
        daemon.stop()
