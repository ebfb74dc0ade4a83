"""traitflow.objectstore: the S3 requests Tansu makes, answered from files, as its
`object_store` client expects them (conditional puts, cached gets, listings), and a
broker on it that keeps its topics and committed offsets across a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import Publisher, wait_until
from traitflow.config import Settings
from traitflow.objectstore import XMLNS, ObjectStore
from traitflow.services import Service, free_port, port_open
from traitflow.topics import ensure_topics, read_topic

pytestmark = pytest.mark.integration


def keys_listed(body: bytes) -> tuple[list[str], list[str]]:
    root = ElementTree.fromstring(body)
    ns = {"s3": XMLNS}
    keys = [e.text or "" for e in root.findall("s3:Contents/s3:Key", ns)]
    prefixes = [e.text or "" for e in root.findall("s3:CommonPrefixes/s3:Prefix", ns)]
    return keys, prefixes


def test_conditional_puts_are_optimistic_concurrency(tmp_path: Path) -> None:
    (tmp_path / "tansu" / "a").mkdir(parents=True)
    (tmp_path / "tansu" / "a" / ".tmp-cut-short").write_bytes(b"half a write")
    store = ObjectStore(tmp_path)
    create = {"if-none-match": "*"}
    first = store.handle("PUT", "/tansu/a/meta.json", create, b"1")
    assert first.status == 200
    assert store.handle("PUT", "/tansu/a/meta.json", create, b"2").status == 412
    etag = first.headers["etag"]
    second = store.handle("PUT", "/tansu/a/meta.json", {"if-match": etag}, b"2")
    assert second.status == 200
    assert second.headers["etag"] != etag  # every write is a new version
    stale = store.handle("PUT", "/tansu/a/meta.json", {"if-match": etag}, b"3")
    assert stale.status == 412
    missing = store.handle("PUT", "/tansu/a/none.json", {"if-match": etag}, b"3")
    assert missing.status == 412
    got = store.handle("GET", "/tansu/a/meta.json", {}, b"")
    assert (got.status, got.body, got.headers["etag"]) == (200, b"2", second.headers["etag"])
    assert "GMT" in got.headers["last_modified"]
    cached = store.handle("GET", "/tansu/a/meta.json", {"if-none-match": got.headers["etag"]}, b"")
    assert cached.status == 304
    assert store.handle("GET", "/tansu/a/gone.json", {}, b"").status == 404
    assert store.handle("GET", "/tansu/a", {}, b"").status == 404  # a "directory"
    assert store.handle("GET", "/tansu/../../etc/passwd", {}, b"").status == 400
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_listings_by_prefix_with_and_without_a_delimiter(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    for key in ["t/p/0/a.batch", "t/p/0/b.batch", "t/p/1/a.batch", "t/q.json", "u.json"]:
        assert store.handle("PUT", f"/tansu/{key}", {}, key.encode()).status == 200
    everything = store.handle("GET", "/tansu?list-type=2&prefix=t%2F", {}, b"")
    assert keys_listed(everything.body) == (
        ["t/p/0/a.batch", "t/p/0/b.batch", "t/p/1/a.batch", "t/q.json"],
        [],
    )
    level = store.handle("GET", "/tansu?list-type=2&prefix=t%2F&delimiter=%2F", {}, b"")
    assert keys_listed(level.body) == (["t/q.json"], ["t/p/"])
    after = store.handle(
        "GET", "/tansu?list-type=2&prefix=t%2Fp%2F0%2F&start-after=t%2Fp%2F0%2Fa.batch", {}, b""
    )
    assert keys_listed(after.body) == (["t/p/0/b.batch"], [])
    bulk = (
        b"<Delete><Object><Key>t/p/0/a.batch</Key></Object>"
        b"<Object><Key>u.json</Key></Object></Delete>"
    )
    assert store.handle("POST", "/tansu?delete", {}, bulk).status == 200
    assert store.handle("DELETE", "/tansu/t/q.json", {}, b"").status == 204
    remaining = store.handle("GET", "/tansu?list-type=2", {}, b"")
    assert keys_listed(remaining.body) == (["t/p/0/b.batch", "t/p/1/a.batch"], [])
    assert store.handle("PUT", "/tansu/x?partNumber=1&uploadId=u", {}, b"").status == 501


def test_a_broker_on_disk_keeps_topics_and_offsets_across_a_kill(
    settings: Settings, tmp_path: Path
) -> None:
    broker = Service("broker", tmp_path / "broker", port=free_port(), storage="disk")
    broker.start()
    try:
        own = settings.isolated(
            f"tfobj-{uuid.uuid4().hex[:8]}",
            kafka_bootstrap=f"127.0.0.1:{broker.port}",
            topic_partitions=2,
        )
        topic = next(iter(own.sources))
        asyncio.run(ensure_topics(own))
        Publisher(own, topic)([{"n": n} for n in range(50)])

        async def commit(offset: int) -> dict[int, int | None]:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=own.kafka_bootstrap,
                group_id=own.app_id,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                partitions = [TopicPartition(topic, p) for p in range(2)]
                consumer.assign(partitions)
                if offset:
                    await consumer.commit(dict.fromkeys(partitions, offset))
                return {tp.partition: await consumer.committed(tp) for tp in partitions}
            finally:
                await consumer.stop()

        assert asyncio.run(commit(7)) == {0: 7, 1: 7}
        pid = broker.pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        wait_until(
            lambda: broker.pid() is None and not port_open(broker.host, broker.port),
            timeout=10,
            what="the broker to die and its port to close",
        )
        broker.start()
        assert len(asyncio.run(read_topic(own, topic))) == 50
        assert asyncio.run(commit(0)) == {0: 7, 1: 7}
    finally:
        broker.stop()
