"""Backfill: how fast an attribute made through the API is computed over the history,
with and without live traffic, and what it does to live event -> stored latency.

    python -m bench.backfill [--events 100000] [--users 5000] [--partitions 4]
        [--live-rate 1000] [--probe-interval-ms 100] [--probe-timeout-s 30]

One `traitflow worker` (one process, `examples/rules.yaml`) on the embedded services
(or those the environment names) first applies `--events` of `bench.pipeline`'s stream.
Then, twice, an attribute (`count` of `Order Completed`) is made PROCESSING, as
`POST /data/core/ca/attributes` with `status: ACTIVE` does, and timed until the worker
made it ACTIVE: once with no other traffic, once while a process of its own sends
`--live-rate` events/s. Probes measure event -> stored view latency, for 10 s of the
live traffic alone and then during the second backfill: `bench.freshness`'s probes (an
order with messageId, timestamp and revenue for one of 20 probe users, its clock
stopped when the view's version in Redis moves), one every `--probe-interval-ms`
whether or not the one before was seen (a slow period then delays many probes, not
just one), each waited for at most `--probe-timeout-s`. A probe not seen within it
counts as slower than the timeout in the percentiles and is reported: a probe loop
that waited without a bound hung this bench when the worker fell behind.
Prints the backfill rates (history events / seconds from creation to ACTIVE), the
probes' p50/p99 in both periods, and checks the backfilled values: every profile's
backfilled count must equal its `purchase_count` (exits 1 otherwise). Each wait is
logged to stderr, with progress every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaProducer

from attributes.catalog import ManagedAttribute, Status, new_attribute
from bench.freshness import Bench, background, percentile
from bench.pipeline import cleanup, drop_topics, make_events, publish, trusted, version
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.rule_catalog import Change, RedisRuleCatalog
from traitflow.services import Daemon, embedded_services
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
ORDERS = {"function": "count", "event": "Order Completed"}
#: seconds between progress lines while the bench waits
PROGRESS_S = 5.0
#: the attribute backfilled with no other traffic, and the one backfilled beside it
NAMES = ("orders_idle", "orders_busy")


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


def alive(worker: subprocess.Popen[bytes], daemon: Daemon) -> None:
    """Exit, naming its log, when the worker has died: every wait here is on it."""
    if worker.poll() is not None:
        sys.exit(f"worker died (exit {worker.returncode}): see {daemon.log_file}")


def backfill(
    settings: Settings, name: str, check_worker: Callable[[], None], timeout_s: float = 600
) -> float:
    """Make `name` PROCESSING; the seconds until the worker made it ACTIVE."""
    made = new_attribute(
        f"ca-{uuid.uuid4().hex[:12]}", {**ORDERS, "name": name}, Status.PROCESSING, 1
    )
    started = time.perf_counter()
    catalog_call(settings, lambda c: c.change(lambda _: Change(put=made)))
    deadline = started + timeout_s
    next_line = started + PROGRESS_S
    while (now := time.perf_counter()) < deadline:
        check_worker()
        snapshot = catalog_call(settings, lambda c: c.snapshot())
        found: ManagedAttribute | None = snapshot.get(made.id)
        if found is not None and found.status is Status.ACTIVE:
            return time.perf_counter() - started
        if now >= next_line:
            status = found.status.value if found else "missing"
            say(f"  waiting for {name} to be ACTIVE: {now - started:.0f} s, {status}, "
                f"progress {dict(found.progress) if found else {}}")  # fmt: skip
            next_line = now + PROGRESS_S
        time.sleep(0.05)
    sys.exit(f"{name} was not backfilled within {timeout_s} s")


async def probe(
    settings: Settings, interval_s: float, timeout_s: float, running: Callable[[], bool], label: str
) -> tuple[list[float], int]:
    """`bench.freshness`'s probes read back from Redis, one every `interval_s` while
    `running()` holds, each waited for at most `timeout_s`: the latencies (ms) of those
    seen, and how many were not seen in time."""
    bench = Bench(settings, "127.0.0.1", 0, "", via="redis")
    bench.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await bench.producer.start()
    tasks: list[asyncio.Task[float | None]] = []
    next_line = time.perf_counter() + PROGRESS_S
    try:
        while running():
            tasks.append(asyncio.ensure_future(bench.probe(timeout_s)))
            await asyncio.sleep(interval_s)
            if time.perf_counter() >= next_line:
                say(f"  probes {label}: {progress(tasks)}")
                next_line += PROGRESS_S
        say(f"  probes {label}: {progress(tasks)}; waiting up to {timeout_s:.0f} s for the rest")
        results = await asyncio.gather(*tasks)
    finally:
        await bench.producer.stop()
    seen = [ms for ms in results if ms is not None]
    return seen, len(results) - len(seen)


def progress(tasks: Sequence[asyncio.Task[float | None]]) -> str:
    done = [task.result() for task in tasks if task.done()]
    missed = sum(ms is None for ms in done)
    return f"{len(tasks)} sent, {len(done) - missed} seen, {missed} not seen in time"


def summary(label: str, seen: list[float], missed: int, timeout_s: float) -> str:
    """A period's probes: a probe not seen counts as slower than the timeout."""
    values = seen + [math.inf] * missed

    def ms(fraction: float) -> str:
        value = percentile(values, fraction)
        return f">{timeout_s * 1000:.0f} ms" if math.isinf(value) else f"{value:.1f} ms"

    if not values:
        return f"probe {label:<16} none sent"
    return (
        f"probe {label:<16} n={len(values)}, not seen within {timeout_s:.0f} s: {missed}; "
        f"p50 {ms(0.5)}, p99 {ms(0.99)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--live-rate", type=float, default=1000.0)
    parser.add_argument("--probe-interval-ms", type=float, default=100.0)
    parser.add_argument("--probe-timeout-s", type=float, default=30.0, help="per probe")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"bench-bf-{run}",
        topic_partitions=args.partitions,
        rules_path=(ROOT / "examples" / "rules.yaml").resolve(),
        source_trust=trusted(base),
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
    interval, timeout_s = args.probe_interval_ms / 1000, args.probe_timeout_s
    say(f"history published; worker pid {worker.pid} applies it (log: {daemon.log_file})")
    try:
        started = next_line = time.perf_counter()
        for user in (key.removeprefix("anon-") for key in last_key.values()):
            while (applied := version(client, settings, user)) < expected.events[user]:
                alive(worker, daemon)
                if time.perf_counter() >= next_line:
                    say(f"  waiting for the history: {time.perf_counter() - started:.0f} s, "
                        f"{user} at {applied} of {expected.events[user]} events")  # fmt: skip
                    next_line += PROGRESS_S
                time.sleep(0.05)
        say("history applied; backfill with no other traffic")
        quiet_s = backfill(settings, NAMES[0], lambda: alive(worker, daemon))
        say(f"backfilled in {quiet_s:.2f} s; now with live traffic")

        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        sent, elapsed = context.Value("q", 0), context.Value("d", 0.0)
        load = context.Process(
            target=background,
            args=(settings.kafka_bootstrap, topic, args.live_rate, ready, stop, sent, elapsed),
        )
        load.start()
        try:
            if not ready.wait(60):
                sys.exit("the live traffic's process did not start within 60 s")
            say(f"live traffic at {args.live_rate:,.0f} events/s; probing it alone for 10 s")
            end = time.perf_counter() + 10.0
            alone = asyncio.run(
                probe(
                    settings,
                    interval,
                    timeout_s,
                    lambda: time.perf_counter() < end and worker.poll() is None,
                    "live alone",
                )
            )
            alive(worker, daemon)
            say("backfill with live traffic, probes beside it")
            backfilled = threading.Event()
            with ThreadPoolExecutor(1) as pool:
                during = pool.submit(
                    lambda: asyncio.run(
                        probe(
                            settings,
                            interval,
                            timeout_s,
                            lambda: not backfilled.is_set(),
                            "during backfill",
                        )
                    )
                )
                try:
                    busy_s = backfill(settings, NAMES[1], lambda: alive(worker, daemon))
                finally:
                    backfilled.set()
                during_backfill = during.result()
            say(f"backfilled in {busy_s:.2f} s")
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
    for label, (seen, missed) in (("live alone", alone), ("during backfill", during_backfill)):
        print(summary(label, seen, missed, timeout_s))
    print(f"profiles checked  {len(expected.events)}, wrong: {len(wrong)}")
    if wrong:
        print(f"  e.g. (purchase_count, {', '.join(NAMES)}): {'; '.join(wrong[:5])}")
        sys.exit(1)


def check(client: redis.Redis, settings: Settings, expected: Any) -> list[str]:
    """Profiles whose backfilled counts differ from their purchase_count: each as
    `user: purchase_count, orders_idle, orders_busy`, so a failure shows which one and
    in which direction."""
    keys = KeyLayout(settings.key_prefix)
    users = sorted(expected.events)
    wrong = []
    for user, raw in zip(users, client.mget([keys.view("user", u) for u in users]), strict=True):
        attributes = orjson.loads(raw)["attributes"] if raw else {}
        counts = [attributes.get(name, 0) for name in ("purchase_count", *NAMES)]
        if len(set(counts)) > 1:
            wrong.append(f"{user}: {', '.join(map(str, counts))}")
    return wrong


if __name__ == "__main__":
    main()
