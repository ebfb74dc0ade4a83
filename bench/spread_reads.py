"""The API's profile reads on the spread layout (option B, `api.spread_store`) on a local
3-master Redis Cluster: by `user_id` (the identity each profile was made from: one
round trip), by email and by the anonymous id merged in at login (identities linked
later: two round trips without the pointer cache, one with it, `traitflow.spread_pointers`).

    python -m bench.spread_reads [--people 500] [--reads 3000] [--buckets 1024]

A cluster of its own (`tests/integration/cluster.py`'s) is given `--people` people who
browse anonymously and log in with an email (a merge across slots); the store the API
uses then reads each kind `--reads` times, round-robin over the people: one read at a
time (µs per read: median and p99) and 32 at a time (reads/s). The first pass over the
people is not timed (it fills the pointer cache where there is one). No rate-limit
charge: the store alone, in one process, as the API's request would use it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from api.spread_store import ChargedSpreadStore
from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import ENTITY, BatchProcessor, ListDeadLetters, Record
from tests.integration.cluster import LocalCluster
from traitflow.config import Settings
from traitflow.spread_store import SpreadProfileStore

RULES = Path(__file__).resolve().parents[1] / "examples" / "rules.yaml"
CONCURRENCY = 32


def people_events(people: int) -> list[bytes]:
    made = []
    for p in range(people):
        made.append(orjson.dumps({"type": "page", "anonymousId": f"anon-{p}",
                                  "timestamp": "2026-01-01T00:00:00Z"}))  # fmt: skip
    for p in range(people):
        made.append(
            orjson.dumps(
                {
                    "type": "identify",
                    "userId": f"b-{p}",
                    "anonymousId": f"anon-{p}",
                    "traits": {"email": f"b-{p}@example.com"},
                    "timestamp": "2026-01-01T00:01:00Z",
                }
            )
        )
    return made


def lookup(kind: str, p: int) -> tuple[str, str]:
    value = {"user_id": f"b-{p}", "email": f"b-{p}@example.com", "anonymous_id": f"anon-{p}"}
    return kind, value[kind]


async def measure(settings: Settings, buckets: int, people: int, reads: int) -> None:
    writer = SpreadProfileStore.from_url(settings, settings.key_prefix, buckets)
    processor = BatchProcessor(load_rules(RULES), writer, ListDeadLetters(), trust=TRUST_ALL)
    raw = people_events(people)
    for start in range(0, len(raw), 1000):
        chunk = raw[start : start + 1000]
        await processor.process(
            [Record("events", 0, start + i, value, 0) for i, value in enumerate(chunk)]
        )
    await writer.close()
    store = ChargedSpreadStore.from_url(settings, settings.key_prefix, buckets)
    try:
        for kind in ("user_id", "email", "anonymous_id"):
            for p in range(people):  # untimed: the cache, where there is one, fills
                assert await store.read_view(ENTITY, *lookup(kind, p)) is not None
            took = []
            for n in range(reads):
                started = time.perf_counter()
                await store.read_view(ENTITY, *lookup(kind, n % people))
                took.append((time.perf_counter() - started) * 1e6)
            took.sort()

            async def one_of(worker: int, kind: str = kind) -> None:
                for n in range(worker, reads, CONCURRENCY):
                    await store.read_view(ENTITY, *lookup(kind, n % people))

            started = time.perf_counter()
            await asyncio.gather(*(one_of(w) for w in range(CONCURRENCY)))
            rate = reads / (time.perf_counter() - started)
            print(
                f"by {kind:12}: {statistics.median(took):6.0f} µs per read (median), "
                f"p99 {took[int(len(took) * 0.99)]:6.0f} µs; "
                f"{rate:7.0f} reads/s at {CONCURRENCY} at once"
            )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--buckets", type=int, default=1024)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        cluster = LocalCluster(Path(home))
        cluster.start()
        try:
            settings = Settings(
                redis_url=cluster.url,
                redis_cluster=True,
                redis_layout="spread",
                redis_buckets=options.buckets,
                key_prefix=f"br-{uuid.uuid4().hex[:6]}",
            )
            asyncio.run(measure(settings, options.buckets, options.people, options.reads))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
