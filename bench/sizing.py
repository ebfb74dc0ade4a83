"""Sizing: Redis memory per profile and Redis commands per event, through a real worker.

    python -m bench.sizing [--profiles 20000 --events 8 --stream profiles --partitions 8]
    python -m bench.sizing --profiles 5000 --rate 2000   # live traffic instead of a backlog
    python -m bench.sizing --redis spread [--buckets 1024]   # a local 3-master cluster

What a deployment is sized from (README, Sizing): how much Redis memory a profile
takes and how much Redis work an event makes. Starts a redis-server of its own (the
embedded service's configuration: AOF, noeviction; on a free port, in a temporary
directory removed at the end), because `INFO memory` and `INFO commandstats` are
whole-server figures: nothing else may use that server during the run. Unless
TRAITFLOW_KAFKA_BOOTSTRAP names a broker, it starts a Tansu broker of its own too
(memory storage). It publishes the events of `--profiles` users, starts one
`traitflow worker --processes 1` with examples/rules.yaml (`--rules`) on them (a
backlog, so batches are full: `TRAITFLOW_BATCH_SIZE`), waits until the worker's
records counter says every event is applied, and reports what follows. With `--rate
R` the worker starts first and the events are sent at R events/s, so its batches are
what live traffic at that rate makes (smaller: a batch is what arrived while the one
before it was processed), and Redis's work per event includes their fixed costs.

- memory: `used_memory` after minus before; `MEMORY USAGE` of every kind of key of
  `traitflow.store`'s layout (the keys a profile owns on a sample of `--sample` keys per
  kind, the others whole), per profile, and per event for the applied-messageId sets,
  which follow the event rate over the dedupe window rather than the profile count;
- Redis work: `INFO commandstats` after minus before, per command, per event, per
  profile write and per batch (the worker's own counters), with the microseconds
  Redis spent per call; Redis's CPU (`INFO cpu`: the server process, I/O included)
  and network bytes per event; then what the idle worker's timers cost per second.

Exits non-zero if the worker dies, does not finish within `--timeout`, dead-letters
an event, or leaves profiles that are not what the stream makes.

`--redis tag` or `spread` runs on a local 3-master Redis Cluster of its own
(`tests/integration/cluster.py`: Debian's redis-server, no AOF) with that layout
(docs/redis-cluster.md): every figure is summed over the masters.

`--stream profiles` (the default) is `bench.memory`'s users: 1-2 anonymous page views,
an identify with email, name and plan, then views, orders and pages with both ids,
uuid messageIds and a browser `context`; `--events` per user on average, over the
last 7 days. Each user ends as one profile with three identities that absorbed an
anonymous one. `--stream pipeline` is `bench.pipeline`'s `make_events`, the stream
the worker's events/s figures come from (`--events` per user, two identities, short
messageIds); its profiles are checked as `bench.pipeline` checks them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import redis
from aiokafka import AIOKafkaProducer

from bench.memory import keyspace_buckets, user_events
from bench.pipeline import check, counters, make_events, publish, tree_cpu_seconds, trusted
from bench.redis_usage import (
    COUNTERS,
    Run,
    measure_keys,
    print_commands,
    print_memory,
    snapshot,
)
from tests.integration.cluster import MASTERS, LocalCluster
from traitflow.config import Settings
from traitflow.services import Daemon, Service, free_port
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
#: seconds a paced run gives the worker to join its group before sending
JOIN_S = 3.0


def profile_stream(profiles: int, events: int, seed: int) -> list[tuple[bytes, bytes]]:
    """`bench.memory`'s users, all interleaved in time, keyed as producers key them."""
    rng = random.Random(seed)
    end_ms = int(time.time() * 1000)
    timed = []
    for n in range(profiles):
        for event in user_events(n, events, end_ms, rng):
            key = (event.get("userId") or event["anonymousId"]).encode()
            timed.append((datetime.fromisoformat(event["timestamp"]), key, orjson.dumps(event)))
    timed.sort(key=lambda item: item[0])
    return [(key, value) for _, key, value in timed]


def wait_done(
    daemon: Daemon,
    process: subprocess.Popen[bytes],
    port: int,
    events: int,
    timeout_s: float,
    started: float,
) -> tuple[float, float]:
    """Poll the worker's metrics (never Redis: its command counts are the measurement)
    until every event is counted; the seconds from `started` to its first record and
    to the last."""
    first = 0.0
    while True:
        if process.poll() is not None:
            sys.exit(f"the worker died: see {daemon.log_file}")
        if time.monotonic() - started > timeout_s:
            sys.exit(f"the worker did not apply {events:,} events in {timeout_s:.0f} s")
        records = counters([port], ("traitflow_records_total",))["traitflow_records_total"]
        if records and not first:
            first = time.monotonic() - started
        if records >= events:
            return first, time.monotonic() - started
        time.sleep(0.05)


async def publish_paced(settings: Settings, events: list[tuple[bytes, bytes]], rate: float) -> None:
    """Publish at `rate` events/s, as live traffic arrives (the producer lingers 5 ms,
    as `traitflow produce` does), so that the worker's batches are what that rate makes."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        topic, sent, started = next(iter(settings.sources)), [], time.monotonic()
        for n, (key, value) in enumerate(events):
            ahead = started + n / rate - time.monotonic()
            if ahead > 0.005:
                await asyncio.sleep(ahead)
            sent.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def settled_memory(nodes: list[redis.Redis]) -> tuple[int, int]:
    """used_memory and used_memory_rss of every node, once no AOF rewrite runs (its
    fork would be in used_memory's noise)."""
    used = rss = 0
    for client in nodes:
        while int(client.info("persistence")["aof_rewrite_in_progress"]):
            time.sleep(0.1)
        memory = client.info("memory")
        used, rss = used + int(memory["used_memory"]), rss + int(memory["used_memory_rss"])
    return used, rss


def run_worker(
    settings: Settings,
    nodes: list[redis.Redis],
    events: list[tuple[bytes, bytes]],
    rate: float,
    args: argparse.Namespace,
) -> Run:
    """A backlog (`rate` 0): the events are published, then the worker starts, and its
    start-up is in the figures. Paced: the worker starts, then the events are sent at
    `rate`, and only what follows is counted."""
    port = free_port()
    daemon = Daemon("sizing-worker", settings.home)
    command = [sys.executable, "-m", "traitflow", "worker", "--processes", "1"]
    env = settings.child_env() | {"TRAITFLOW_WORKER_METRICS_PORT": str(port)}
    if not rate:
        asyncio.run(publish(settings, next(iter(settings.sources)), events))
    before = snapshot(nodes)
    process = daemon.spawn([*command, "--loglevel", "warning"], env, ROOT)
    started, cpu = time.monotonic(), 0.0
    try:
        if rate:
            counters([port], COUNTERS)  # answers once the worker runs
            time.sleep(JOIN_S)
            before, cpu = snapshot(nodes), tree_cpu_seconds(process.pid)
            sending = time.monotonic()
            asyncio.run(publish_paced(settings, events, rate))
        wall = wait_done(daemon, process, port, len(events), args.timeout, started)
        if rate:  # from the first event sent
            wall = (sending - started, wall[1])
        done = snapshot(nodes)
        cpu = tree_cpu_seconds(process.pid) - cpu
        counted = counters([port], COUNTERS)
        time.sleep(args.idle)
        idle = snapshot(nodes)
    finally:
        daemon.stop()
    return Run(len(events), before, done, idle, counted, wall, cpu, settled_memory(nodes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=8, help="events per user, on average")
    parser.add_argument("--stream", choices=["profiles", "pipeline"], default="profiles")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--rules",
        type=Path,
        default=ROOT / "examples" / "rules.yaml",
        help="the rule file (e.g. examples/rules.yaml and bench/audiences.yaml in one)",
    )
    parser.add_argument("--sample", type=int, default=1000, help="keys measured per kind")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the idle worker is timed")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s sent to a running worker (0: a backlog)"
    )
    parser.add_argument("--redis", choices=["single", "tag", "spread"], default="single")
    parser.add_argument("--buckets", type=int, default=1024, help="the spread layout's")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="traitflow-bench-sizing-"))
    if args.redis != "single" and args.stream == "pipeline":
        parser.error("--stream pipeline's check reads one Redis: use --redis single")
    services: list[Service] = []
    values: dict[str, object] = {}
    cluster: LocalCluster | None = None
    try:
        if args.redis == "single":
            services.append(Service("redis", home / "redis", "127.0.0.1", free_port()))
            values["redis_url"] = f"redis://127.0.0.1:{services[0].port}/0"
        else:
            cluster = LocalCluster(home / "cluster")
            cluster.start()  # its URL names a port it chose
            values |= {"redis_url": cluster.url, "redis_cluster": True, "redis_layout": args.redis}
            values["redis_buckets"] = args.buckets
        if "TRAITFLOW_KAFKA_BOOTSTRAP" not in os.environ:
            broker = Service("broker", home / "broker", "127.0.0.1", free_port(), storage="memory")
            services.append(broker)
            values["kafka_bootstrap"] = f"127.0.0.1:{broker.port}"
        base = Settings.from_environ(os.environ, **values, home=home)
        settings = base.isolated(
            f"sizing-{uuid.uuid4().hex[:8]}",
            topic_partitions=args.partitions,
            rules_path=args.rules.resolve(),
            source_trust=trusted(base),
        )
        if args.stream == "pipeline":
            events, expected = make_events(args.profiles * args.events, args.profiles, args.seed)
        else:
            events, expected = profile_stream(args.profiles, args.events, args.seed), None
        for service in services:
            service.start()
        if cluster is not None:
            nodes = [cluster.client(n) for n in range(MASTERS)]
        else:
            nodes = [redis.Redis.from_url(settings.redis_url)]
        asyncio.run(ensure_topics(settings))
        run = run_worker(settings, nodes, events, args.rate, args)
        buckets_tag = "{" + settings.key_prefix.strip("{}") + ".b*}:*"
        patterns = [buckets_tag] if args.redis == "spread" else []
        kinds = measure_keys(nodes, settings.key_prefix, args.sample, patterns)
        buckets = sum(keyspace_buckets(client) for client in nodes)
        version = nodes[0].info("server")["redis_version"]
        wrong = check(nodes[0], settings, expected) if expected is not None else 0
        for client in nodes:
            client.close()
    finally:
        if cluster is not None:
            cluster.stop()
        for service in reversed(services):
            service.stop()
        shutil.rmtree(home, ignore_errors=True)
    profiles = next((k.keys for k in kinds if k.name == "state"), 0)
    users = len(expected.events) if expected is not None else args.profiles
    where = "one Redis" if cluster is None else f"{MASTERS}-master cluster, {args.redis} layout"
    print(f"stream             {args.stream}: {len(events):,} events of {users:,} users "
          f"({len(events) / users:.1f} each), {args.partitions} partitions, "
          f"{args.rules.name}, redis-server {version}, {where}")  # fmt: skip
    print_memory(run, kinds, max(1, profiles), buckets)
    print_commands(run, profiles)
    dead = run.counted["traitflow_dead_letters_total"]
    print(f"checked            {profiles:,} profiles for {users:,} users, {wrong} wrong, "
          f"{dead:,.0f} dead letters, {run.counted['traitflow_profile_merges_total']:,.0f} "
          f"merges, {run.counted['traitflow_commit_conflicts_total']:,.0f} conflicts")  # fmt: skip
    if wrong or dead or profiles != users:
        sys.exit(1)


if __name__ == "__main__":
    main()
