"""End-to-end pipeline benchmark: N events through a real worker until the last profile is served.

    python -m bench.pipeline --events 200000 --users 10000 [--anonymous 0.1] [--stitching off]

Publishes N synthetic events (keyed by user, like `traitflow produce`) to a fresh topic,
then starts `--workers` `traitflow worker` processes (one consumer group) on it and
measures:
- start-up: worker process start -> first profile written (consumer-group join etc.);
- throughput: first profile written -> every event applied, in events/s;
- the worker's CPU use over that span, and per event;
- the workers' commit conflicts and merges (their Prometheus counters, read at the end).

"Every event applied" is exact, not sampled: a partition is processed in offset order,
so once each partition's last record shows in its profile's version, all records are
in. Afterwards every profile's purchase count and lifetime value are checked against
totals computed here. Uses the embedded services (started if needed) unless
TRAITFLOW_KAFKA_BOOTSTRAP / TRAITFLOW_REDIS_URL point elsewhere.

Every event carries its user's `anonymousId` (`anon-<user>`) as an SDK's do, so each
profile has two identities. `--anonymous F` makes a fraction F of the events anonymous
(only the `anonymousId`, keyed by it, so on another partition than the user's other
events): their profiles merge into the user's when a later event carries both, which
is identity stitching at work, two workers writing one person included. Each user's
last event carries both ids, so every anonymous profile is merged by the end.
`--stitching off` runs the worker with stitching turned off (nothing merges; only
with `--anonymous 0`, where the served profiles are the same either way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from attributes.identities import DEFAULT_USER
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import (
    Daemon,
    child_pids,
    consecutive_free_ports,
    embedded_services,
    free_port,
)
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
COUNTERS = ("traitflow_commit_conflicts_total", "traitflow_profile_merges_total")
METRICS_WAIT_S = 30.0


@dataclass
class Expected:
    events: dict[str, int] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)
    revenue_cents: dict[str, int] = field(default_factory=dict)


CATEGORIES = ["books", "garden", "kitchen", "toys", "music", "games", "shoes", "tools"]


def trusted(settings: Settings) -> dict[str, str]:
    """`source_trust` naming every source of `settings` trusted: the benches' streams log
    devices in to users, as a backend's events do, and a source not named may link
    nothing (README, "Trusted links"), which would leave every user anonymous."""
    return {source: "trusted" for source in settings.sources.values()}


def make_events(
    n: int, users: int, seed: int, anonymous: float = 0.0
) -> tuple[list[tuple[bytes, bytes]], Expected]:
    """(key, value) pairs: 55% product views, 30% orders, 10% pages, 5% identifies, one
    second apart and ending now, so that the example rules' windows hold them; a
    fraction `anonymous` of the views and pages without the userId."""
    rng = random.Random(seed)
    expected = Expected()
    out: list[tuple[bytes, bytes]] = []
    base = int(time.time()) * 1000 - n * 1000
    last_anonymous: dict[str, int] = {}  # user -> index in `out` of its latest event
    for i in range(n):
        user = f"bench-user-{rng.randrange(users)}"
        roll = rng.random()
        ts = base + i * 1000
        event: dict[str, object] = {
            "userId": user,
            "anonymousId": f"anon-{user}",
            "messageId": f"m{i}",
        }
        key = user
        if roll >= 0.30 and rng.random() < anonymous:
            del event["userId"]
            key = f"anon-{user}"
            last_anonymous[user] = len(out)
        else:
            last_anonymous.pop(user, None)
        if roll < 0.30:
            cents = rng.randrange(100, 50_000)
            event |= {
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "revenue": cents / 100,
                    "product_id": f"sku-{rng.randrange(500)}",
                    "currency": rng.choice(["EUR", "EUR", "USD"]),
                },
            }
            expected.orders[user] = expected.orders.get(user, 0) + 1
            expected.revenue_cents[user] = expected.revenue_cents.get(user, 0) + cents
        elif roll < 0.85:
            event |= {
                "type": "track",
                "event": "Product Viewed",
                "properties": {
                    "product_id": f"sku-{rng.randrange(500)}",
                    "category": rng.choice(CATEGORIES),
                },
            }
        elif roll < 0.95:
            event |= {"type": "page", "properties": {"path": "/"}}
        else:
            event |= {"type": "identify", "traits": {"plan": rng.choice(["free", "pro"])}}
        event["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts / 1000))
        expected.events[user] = expected.events.get(user, 0) + 1
        out.append((key.encode(), orjson.dumps(event)))
    for user, index in last_anonymous.items():  # its last event links its anonymous one
        event = orjson.loads(out[index][1]) | {"userId": user}
        out[index] = (user.encode(), orjson.dumps(event))
    return out, expected


async def publish(
    settings: Settings, topic: str, events: list[tuple[bytes, bytes]]
) -> dict[int, str]:
    """Publish; return partition -> user of that partition's last record."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        futures = [(key, await producer.send(topic, value, key=key)) for key, value in events]
        last: dict[int, tuple[int, str]] = {}
        for key, future in futures:
            meta = await future
            if meta.offset >= last.get(meta.partition, (-1, ""))[0]:
                last[meta.partition] = (meta.offset, key.decode())
    finally:
        await producer.stop()
    return {partition: user for partition, (_, user) in last.items()}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and of the processes it started (a supervisor's workers)."""
    return sum(cpu_seconds(p) for p in (pid, *child_pids(pid)))


def version(client: redis.Redis, settings: Settings, user: str) -> int:
    raw = client.get(KeyLayout(settings.key_prefix).view("user", user))
    return int(orjson.loads(raw)["version"]) if raw else 0


def check(client: redis.Redis, settings: Settings, expected: Expected) -> int:
    """Compare every profile with the totals computed at generation; return mismatches."""
    users = sorted(expected.events)
    keys = KeyLayout(settings.key_prefix)
    views = client.mget([keys.view("user", user) for user in users])
    wrong = 0
    for user, raw in zip(users, views, strict=True):
        attributes = orjson.loads(raw)["attributes"] if raw else {}
        if attributes.get("purchase_count") != expected.orders.get(user, 0) or round(
            attributes.get("lifetime_value", 0) * 100
        ) != expected.revenue_cents.get(user, 0):
            wrong += 1
    return wrong


def metrics_page(port: int, wait_s: float = METRICS_WAIT_S) -> str:
    """A worker's /metrics page. A supervisor's second child may still be importing when
    the first has done every event of a small run, so a refused connection is retried
    until `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                return str(page.read().decode())
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def counters(ports: list[int], names: tuple[str, ...]) -> dict[str, float]:
    """The sum over the workers of each named counter (all label sets together)."""
    totals = dict.fromkeys(names, 0.0)
    for port in ports:
        for line in metrics_page(port).splitlines():
            name, _, value = line.partition(" ")
            base = name.split("{", 1)[0]
            if base in totals:
                totals[base] += float(value)
    return totals


def drop_topics(settings: Settings, fragment: str) -> None:
    """Delete the broker's topics whose names contain `fragment` (a run's name): its
    input, dead letters, Faust's and Quix's own; the embedded broker keeps them
    otherwise, on disk."""

    async def drop() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            doomed = [name for name in await admin.list_topics() if fragment in name]
            if doomed:
                await admin.delete_topics(doomed)
        finally:
            await admin.close()

    asyncio.run(drop())


def cleanup(client: redis.Redis, settings: Settings) -> None:
    for key in client.scan_iter(match=KeyLayout(settings.key_prefix).all_keys(), count=10_000):
        client.unlink(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes in the consumer group"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="with N > 1: one `traitflow worker --processes N` instead of --workers commands",
    )
    parser.add_argument("--anonymous", type=float, default=0.0, help="anonymous event share")
    parser.add_argument("--stitching", choices=["on", "off"], default="on")
    parser.add_argument(
        "--timeout-s", type=float, default=900.0, help="exit 1 if not all applied by then"
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=ROOT / "examples" / "rules.yaml",
        help="the rule file; it must hold the reference rules' attributes, which the check "
        "reads (e.g. them plus bench/audiences.yaml)",
    )
    args = parser.parse_args()
    if args.stitching == "off" and args.anonymous:
        sys.exit("--stitching off needs --anonymous 0: anonymous profiles would never merge")

    run = uuid.uuid4().hex[:8]
    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"bench-{run}",
        topic_partitions=args.partitions,
        rules_path=args.rules.resolve(),
        entities=base.entities
        | {"user": DEFAULT_USER.model_copy(update={"stitching": args.stitching == "on"})},
        source_trust=trusted(base),
    )
    topic = next(iter(settings.sources))
    events, expected = make_events(args.events, args.users, args.seed, args.anonymous)
    asyncio.run(ensure_topics(settings))
    started = time.perf_counter()
    last_key = asyncio.run(publish(settings, topic, events))
    last_user = {partition: key.removeprefix("anon-") for partition, key in last_key.items()}
    produce_s = time.perf_counter() - started

    env = settings.child_env()
    client = redis.Redis.from_url(settings.redis_url)
    t_start = time.perf_counter()
    if args.processes > 1:  # one command, its supervisor's children serve P, P + 1, ...
        daemons = [Daemon("bench-workers", settings.home / "bench")]
        base_port = consecutive_free_ports(args.processes)
        ports = [base_port + i for i in range(args.processes)]
        command = [sys.executable, "-m", "traitflow", "worker", "--processes", str(args.processes)]
        envs = [env | {"TRAITFLOW_WORKER_METRICS_PORT": str(base_port)}]
    else:  # one command per worker: `--workers` counts processes
        home = settings.home / "bench"
        daemons = [Daemon(f"bench-worker-{i}", home) for i in range(args.workers)]
        ports = [free_port() for _ in daemons]
        command = [sys.executable, "-m", "traitflow", "worker", "--processes", "1"]
        envs = [env | {"TRAITFLOW_WORKER_METRICS_PORT": str(port)} for port in ports]
    command += ["--loglevel", "warning"]
    processes = [
        daemon.spawn(command, daemon_env, ROOT)
        for daemon, daemon_env in zip(daemons, envs, strict=True)
    ]

    def cpu() -> float:  # the supervisor's children's, if any
        return sum(tree_cpu_seconds(process.pid) for process in processes)

    deadline = time.perf_counter() + args.timeout_s

    def still_waiting() -> None:
        """Exit, naming the log, if a worker died or the run outlasted `--timeout-s`."""
        for daemon, process in zip(daemons, processes, strict=True):
            if process.poll() is not None:
                sys.exit(f"worker died: see {daemon.log_file}")
        if time.perf_counter() > deadline:
            logs = ", ".join(str(daemon.log_file) for daemon in daemons)
            sys.exit(f"not every event applied within {args.timeout_s:.0f} s: see {logs}")

    try:
        last_views = [KeyLayout(settings.key_prefix).view("user", u) for u in last_user.values()]
        while not client.exists(*last_views):
            still_waiting()
            time.sleep(0.01)
        t_first = time.perf_counter()
        cpu_first = cpu()
        pending = dict(last_user)
        while pending:
            for partition, user in list(pending.items()):
                if version(client, settings, user) >= expected.events[user]:
                    del pending[partition]
            still_waiting()
            time.sleep(0.01)
        t_done = time.perf_counter()
        cpu_done = cpu()
        found = counters(ports, COUNTERS)
    finally:
        for daemon in daemons:
            daemon.stop()
    wrong = check(client, settings, expected)
    cleanup(client, settings)
    drop_topics(settings, f"bench-{run}")

    span = t_done - t_first
    print(f"events            {args.events} over {args.users} users, {args.partitions} partitions")
    print(f"produce           {args.events / produce_s:,.0f} events/s")
    print(f"workers           {args.workers if args.processes == 1 else ''}", end="")
    print(f"{args.processes} processes of one command" if args.processes > 1 else "")
    print(f"identities        anonymous share {args.anonymous:.0%}, stitching {args.stitching}")
    print(f"worker start-up   {t_first - t_start:.2f} s (process start -> first profile written)")
    print(f"throughput        {args.events / span:,.0f} events/s ({span:.2f} s)")
    print(f"worker CPU        {100 * (cpu_done - cpu_first) / span:.0f}% of one core (all workers)")
    per_event = 1e6 * (cpu_done - cpu_first) / args.events
    print(
        f"worker CPU/event  {per_event:.1f} us (all workers; moves less than the rate when shared)"
    )
    conflicts, merges = (found[name] for name in COUNTERS)
    print(f"conflicts, merges {conflicts:,.0f} commit conflicts, {merges:,.0f} profile merges")
    print(f"profiles checked  {len(expected.events)}, wrong: {wrong}")
    if wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
