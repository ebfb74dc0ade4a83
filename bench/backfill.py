"""Backfill: how fast an attribute made through the API is computed over the history,
with and without live traffic, and what it does to live event -> stored latency.

    python -m bench.backfill [--events 100000] [--users 5000] [--partitions 4]
        [--live-rate 1000] [--probe-interval-ms 100]

One `traitflow worker` (one process, `examples/rules.yaml`) on the embedded services
(or those the environment names) first applies `--events` of `bench.pipeline`'s stream.
Then, twice, an attribute (`count` of `Order Completed`) is made PROCESSING, as
`POST /data/core/ca/attributes` with `status: ACTIVE` does, and timed until the worker
made it ACTIVE: once with no other traffic, once while a process of its own sends
`--live-rate` events/s. Probes (an order for a probe user, one every
`--probe-interval-ms`) measure event -> stored view latency (the view's version in
Redis), before the second backfill (the live traffic alone) and during it.
Prints the backfill rates (history events / seconds from creation to ACTIVE), the
probes' p50/p99 in both periods, and checks the backfilled values: every profile's
backfilled count must equal its `purchase_count` (exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.pool
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaProducer

from attributes.catalog import ManagedAttribute, Status, new_attribute
from bench.freshness import background, percentile
from bench.pipeline import cleanup, drop_topics, make_events, publish, version
from traitflow.config import Settings
from traitflow.rule_catalog import Change, RedisRuleCatalog
from traitflow.services import Daemon, embedded_services
from traitflow.store import KeyLayout
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
ORDERS = {"function": "count", "event": "Order Completed"}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def catalog_call(settings: Settings, work: Any) -> Any:
    async def call() -> Any:
        catalog = RedisRuleCatalog.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await work(catalog)
        finally:
            await catalog.close()

    return asyncio.run(call())


def backfill(settings: Settings, name: str, timeout_s: float = 600) -> float:
    """Make `name` PROCESSING; the seconds until the worker made it ACTIVE."""
    made = new_attribute(
        f"ca-{uuid.uuid4().hex[:12]}", {**ORDERS, "name": name}, Status.PROCESSING, 1
    )
    started = time.perf_counter()
    catalog_call(settings, lambda c: c.change(lambda _: Change(put=made)))
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        snapshot = catalog_call(settings, lambda c: c.snapshot())
        found: ManagedAttribute | None = snapshot.get(made.id)
        if found is not None and found.status is Status.ACTIVE:
            return time.perf_counter() - started
        time.sleep(0.05)
    sys.exit(f"{name} was not backfilled within {timeout_s} s")


async def probe(settings: Settings, topic: str, seconds: float, interval_s: float) -> list[float]:
    """Latencies (ms) of probe orders sent for `seconds`, each until its view moved."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    keys = KeyLayout(settings.key_prefix)
    latencies: list[float] = []
    try:
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            user = f"probe-{n % 20}"
            raw = await client.get(keys.view("user", user))
            before = orjson.loads(raw)["version"] if raw else 0
            event = {"type": "track", "event": "Probe", "userId": user}
            sent = time.perf_counter()
            await producer.send_and_wait(topic, orjson.dumps(event), key=user.encode())
            while True:
                raw = await client.get(keys.view("user", user))
                if raw and orjson.loads(raw)["version"] > before:
                    break
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - sent) * 1000)
            n += 1
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - sent)))
    finally:
        await producer.stop()
        await client.aclose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--live-rate", type=float, default=1000.0)
    parser.add_argument("--probe-interval-ms", type=float, default=100.0)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"bench-bf-{run}",
        topic_partitions=args.partitions,
        rules_path=(ROOT / "examples" / "rules.yaml").resolve(),
    )
    topic = next(iter(settings.sources))
    events, expected = make_events(args.events, args.users, seed=11)
    asyncio.run(ensure_topics(settings))
    last_key = asyncio.run(publish(settings, topic, events))
    client = redis.Redis.from_url(settings.redis_url)
    daemon = Daemon("bench-backfill-worker", settings.home / "bench")
    worker = daemon.spawn(
        [sys.executable, "-m", "traitflow", "worker", "--processes", "1", "--loglevel", "warning"],
        settings.child_env(),
        ROOT,
    )
    interval = args.probe_interval_ms / 1000
    say(f"history published; worker pid {worker.pid} applies it")
    try:
        for user in (key.removeprefix("anon-") for key in last_key.values()):
            while version(client, settings, user) < expected.events[user]:
                if worker.poll() is not None:
                    sys.exit(f"worker died: see {daemon.log_file}")
                time.sleep(0.05)
        say("history applied; backfill with no other traffic")
        quiet_s = backfill(settings, "orders_idle")
        say(f"backfilled in {quiet_s:.2f} s; now with live traffic")

        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        sent, elapsed = context.Value("q", 0), context.Value("d", 0.0)
        load = context.Process(
            target=background,
            args=(settings.kafka_bootstrap, topic, args.live_rate, ready, stop, sent, elapsed),
        )
        load.start()
        ready.wait(30)
        try:
            alone = asyncio.run(probe(settings, topic, 10.0, interval))
            with multiprocessing.pool.ThreadPool(1) as pool:
                during = pool.apply_async(
                    lambda: asyncio.run(probe(settings, topic, quiet_s * 3 + 5, interval))
                )
                busy_s = backfill(settings, "orders_busy")
                during_backfill = during.get()
        finally:
            stop.set()
            load.join()
        wrong = check(client, settings, expected)
    finally:
        daemon.stop()
    cleanup(client, settings)
    drop_topics(settings, f"bench-bf-{run}")

    print(
        f"history           {args.events} events over {args.users} users, "
        f"{args.partitions} partitions"
    )
    print(f"backfill, idle    {args.events / quiet_s:,.0f} events/s ({quiet_s:.2f} s to ACTIVE)")
    print(f"backfill, live    {args.events / busy_s:,.0f} events/s ({busy_s:.2f} s to ACTIVE), "
          f"live traffic {sent.value / max(elapsed.value, 1e-9):,.0f} events/s")  # fmt: skip
    for label, values in (("live alone", alone), ("during backfill", during_backfill)):
        print(
            f"probe {label:<16} n={len(values)} p50 {percentile(values, 0.5):.1f} ms, "
            f"p99 {percentile(values, 0.99):.1f} ms"
        )
    print(f"profiles checked  {len(expected.events)}, wrong: {wrong}")
    if wrong:
        sys.exit(1)


def check(client: redis.Redis, settings: Settings, expected: Any) -> int:
    """Profiles whose backfilled counts differ from their purchase_count."""
    keys = KeyLayout(settings.key_prefix)
    wrong = 0
    for raw in client.mget([keys.view("user", u) for u in sorted(expected.events)]):
        attributes = orjson.loads(raw)["attributes"] if raw else {}
        count = attributes.get("purchase_count", 0)
        if attributes.get("orders_idle", 0) != count or attributes.get("orders_busy", 0) != count:
            wrong += 1
    return wrong


if __name__ == "__main__":
    main()
