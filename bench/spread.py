"""The worker's batches on a local 3-master Redis Cluster: the tag layout (option A,
every key in one slot) against the spread layout (option B, `traitflow.spread_store`),
the same events through the same `BatchProcessor`.

    python -m bench.spread [--people 500] [--batches 20] [--buckets 1024]

A cluster of its own (`tests/integration/cluster.py`'s: Debian's redis-server, no
persistence of note) takes, per layout, a first batch that makes `--people` profiles
(new pointers: claims on the spread layout), then `--batches` batches of one event per
person (known identities), with and without messageId dedupe (on the spread layout
every applied messageId is remembered in its own bucket after the commit: the
finalize step). Prints wall ms per batch (median) and events per second. One process,
one worker: what it measures is latency per batch, not what more shards would carry.

Then the worker's timer rounds on the spread layout with nothing to do (the outbox
relay's and the expiry round's of a partition, as most are most of the time): ms of the
worker per round (median) and commands run on the nodes per round, reading every bucket
each round (as before `traitflow.spread_rounds`) against reading those worth reading.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.integration.cluster import MASTERS, LocalCluster
from traitflow.config import Settings
from traitflow.redis_store import RedisProfileStore
from traitflow.spread_outbox import SpreadOutbox
from traitflow.spread_rounds import FULL_ROUND_S
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import ProfileStore

RULES = Path(__file__).resolve().parents[1] / "examples" / "rules.yaml"


def events(people: int, round_: int, dedupe: bool) -> list[bytes]:
    made = []
    for p in range(people):
        event: dict[str, Any] = {
            "type": "track",
            "event": "Order Completed",
            "timestamp": "2026-01-01T00:00:00Z",
            "properties": {"revenue": 1.5 + round_, "product_id": f"sku-{p % 9}"},
            "userId": f"b-{p}",
        }
        if dedupe:
            event["messageId"] = f"m-{round_}-{p}"
        made.append(orjson.dumps(event))
    return made


async def run(store: ProfileStore, people: int, batches: int, dedupe: bool) -> list[float]:
    processor = BatchProcessor(
        load_rules(RULES), store, ListDeadLetters(), trust=TRUST_ALL, dedupe=dedupe
    )
    offset = 0
    took: list[float] = []
    for round_ in range(batches + 1):
        raw = events(people, round_, dedupe)
        records = [Record("events", 0, offset + i, value, 0) for i, value in enumerate(raw)]
        offset += len(records)
        started = time.perf_counter()
        await processor.process(records)
        if round_:  # the first made the profiles
            took.append((time.perf_counter() - started) * 1000)
    await store.close()
    return took


def commands(cluster: LocalCluster, name: str) -> int:
    """Calls of command `name` run on the masters so far (scripts' included)."""
    total = 0
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            stats = client.info("commandstats").get(f"cmdstat_{name}", {})
            total += int(stats.get("calls", 0))
        finally:
            client.close()
    return total


async def idle_rounds(
    store: SpreadProfileStore, cluster: LocalCluster, rounds: int, *, expiry: bool, every: bool
) -> tuple[list[float], float]:
    """ms per idle round of one partition (the outbox relay's, or `expiry`'s), and the
    commands it ran per round; `every`: each round reads every bucket (the clock moves
    a full round's interval per round). The partition's first round, which reads every
    bucket either way, is not counted."""
    outbox = SpreadOutbox(store.client, store.layout, store.outbox_rounds)
    clock = [0.0]
    store.outbox_rounds.clock = store.expiry_rounds.clock = lambda: clock[0]

    async def round_() -> None:
        if expiry:
            await store.due("user", "events/0", now=int(time.time() * 1000), limit=1000)
        else:
            await outbox.pending("events/0", 100)

    await round_()
    name = "zrange" if expiry else "xrange"
    before = commands(cluster, name)
    took = []
    for _ in range(rounds):
        if every:
            clock[0] += FULL_ROUND_S
        started = time.perf_counter()
        await round_()
        took.append((time.perf_counter() - started) * 1000)
    ran = (commands(cluster, name) - before) / rounds
    await store.close()
    return took, ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--idle-rounds", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        cluster = LocalCluster(Path(home))
        cluster.start()
        try:
            for layout in ("tag", "spread"):
                for dedupe in (False, True):
                    prefix = f"bs-{uuid.uuid4().hex[:6]}"
                    settings = Settings(
                        redis_url=cluster.url,
                        redis_cluster=True,
                        redis_layout=layout,
                        redis_buckets=options.buckets,
                        key_prefix=prefix,
                    )
                    store: ProfileStore = (
                        SpreadProfileStore.from_url(settings, settings.key_prefix, options.buckets)
                        if layout == "spread"
                        else RedisProfileStore.from_url(settings, settings.key_prefix)
                    )
                    took = asyncio.run(run(store, options.people, options.batches, dedupe))
                    median = statistics.median(took)
                    print(
                        f"{layout:6} dedupe={'on ' if dedupe else 'off'} "
                        f"{options.people} events/batch: {median:7.1f} ms per batch (median), "
                        f"{options.people / median * 1000:8.0f} events/s"
                    )
            for expiry in (False, True):
                for every in (True, False):
                    store = SpreadProfileStore.from_url(
                        Settings(redis_url=cluster.url, redis_cluster=True),
                        f"br-{uuid.uuid4().hex[:6]}",
                        options.buckets,
                    )
                    took, ran = asyncio.run(
                        idle_rounds(store, cluster, options.idle_rounds, expiry=expiry, every=every)
                    )
                    print(
                        f"{'expiry' if expiry else 'relay '}, "
                        f"{'every bucket' if every else 'written     '}: "
                        f"{statistics.median(took):6.2f} ms per idle round (median), "
                        f"{ran:6.0f} {'ZRANGE' if expiry else 'XRANGE'} per round"
                    )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
