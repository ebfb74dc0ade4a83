"""traitflow against Quix Streams on Quix's own kind of job, side by side in one run.

    python -m bench.peers [--events 200000 --users 10000 --partitions 4] [--skip-quix]

The job: Segment `track` events (40% `Order Completed` with `properties.revenue`, 60%
`Product Viewed`; every one with `properties.category`, the user's `anonymousId` as
SDKs send it, a `messageId`, and a timestamp one second after the one before, ending
now) for `--users` users, keyed by `userId`, on one fresh topic that both systems
read. Per user: `revenue_sum`, `orders`, `views`, `last_category` (most recent by
event time), written to Redis.

- Quix Streams 3.28.1 runs in a virtualenv of its own (made on first use under
  `TRAITFLOW_HOME/bench/quix-venv`; pip needs the network once): one process,
  confluent-kafka, RocksDB state, its built-in `RedisSink`, at-least-once, with
  changelog topics and without (`bench/peers_quix_app.py`; checkpoints every 1 s).
- traitflow runs one `traitflow worker --processes 1` with those four attributes as a
  rule file (`bench/peers_rules.yaml`), then with the reference rules
  (`examples/rules.yaml`) plus the four; stitching and messageId dedupe on, as
  deployed.

Each system is timed from the first event it processed (Quix: its app's first record;
traitflow: the first profile written) to the moment every partition's last event is
in Redis (the last user of each partition shows its final count), so start-up (group
join, RocksDB, Faust) is left out and printed apart. Then every user's four values are
compared with the totals computed here; any difference fails the run.

Why this way:
- One topic for both systems, published once before either starts, so both read the
  same bytes from the same broker and neither pays for the producer.
- The clock stops at data in Redis, not at offsets committed, because a value is only
  useful once it is served; Quix's sink writes at each checkpoint, so its checkpoint
  interval is 1 s (its default 5 s would add up to 5 s to a ~8 s run).
- CPU is the app's or worker's own (all threads, from /proc) over the timed span, as
  a share of one core; the broker and Redis run on the other core for both.
- Each traitflow user gets two identities (`userId`, `anonymousId`) and stitching, as
  deployed; Quix keys its state by the message key alone, which is the cheaper job.
- Ratios are traitflow's rate over each Quix row's; the load average is printed at
  the start and end because the machine may be shared.

Deviations forced by the embedded broker (Tansu 0.6): the topic is created with
explicit `retention.ms`/`retention.bytes` (Quix copies them to its changelog topics and
Tansu reports only the configs a topic was created with), and Quix's consumer joins
with a 6 s session timeout (Tansu holds a new group's join for half of it; librdkafka's
default of 45 s would add ~22 s to start-up, not to throughput).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.pipeline import cpu_seconds, drop_topics, publish, tree_cpu_seconds, version
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon, embedded_services

ROOT = Path(__file__).resolve().parents[1]
QUIX = "quixstreams[redis]==3.28.1"
CATEGORIES = ["books", "garden", "kitchen", "toys", "music", "games", "shoes", "tools"]


@dataclass
class Totals:
    events: int = 0
    revenue_cents: int = 0
    orders: int = 0
    views: int = 0
    last_category: str | None = None


@dataclass
class Result:
    name: str
    events_per_s: float
    cpu: float
    start_up_s: float
    wrong: int
    checked: int


@dataclass
class Job:
    events: list[tuple[bytes, bytes]]
    totals: dict[str, Totals] = field(default_factory=dict)
    #: partition -> the user of its last record (set once published)
    last_users: dict[int, str] = field(default_factory=dict)


def make_job(n: int, users: int, seed: int) -> Job:
    """The events, and each user's four values computed as they are generated."""
    rng = random.Random(seed)
    base = int(time.time()) - n
    job = Job([])
    for i in range(n):
        user = f"peer-user-{rng.randrange(users)}"
        category = rng.choice(CATEGORIES)
        totals = job.totals.setdefault(user, Totals())
        event: dict[str, Any] = {
            "type": "track",
            "userId": user,
            "anonymousId": f"anon-{user}",
            "messageId": f"peer-{seed}-{i}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i)),
        }
        if rng.random() < 0.4:
            cents = rng.randrange(100, 50_000)
            event["event"] = "Order Completed"
            event["properties"] = {"revenue": cents / 100, "category": category}
            totals.revenue_cents += cents
            totals.orders += 1
        else:
            event["event"] = "Product Viewed"
            event["properties"] = {"category": category}
            totals.views += 1
        totals.events += 1
        totals.last_category = category  # the latest event so far: times only grow
        job.events.append((user.encode(), orjson.dumps(event)))
    return job


def wrong_values(found: dict[str, Any] | None, expected: Totals) -> bool:
    if found is None:
        return True
    return (
        round(float(found.get("revenue_sum") or 0) * 100) != expected.revenue_cents
        or found.get("orders") != expected.orders
        or found.get("views") != expected.views
        or found.get("last_category") != expected.last_category
    )


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes],
    daemon: Daemon,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            sys.exit(f"{daemon.name} exited with {process.returncode}; see {daemon.log_file}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)


async def create_topic(settings: Settings, topic: str, partitions: int) -> None:
    """The job's topic, with the retention configs Quix Streams reads (Tansu reports
    only the configs a topic was created with)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        configs = {"retention.ms": "-1", "retention.bytes": "-1"}
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


def quix_python(home: Path) -> Path:
    """Quix Streams' virtualenv (made and filled on first use)."""
    venv = home / "bench" / "quix-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {QUIX} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", QUIX]
        subprocess.run(pip, check=True)
    return python


def run_quix(settings: Settings, topic: str, job: Job, changelog: str) -> Result:
    client = redis.Redis.from_url(settings.redis_url)
    prefix = f"{topic}-quix-{changelog}"  # its consumer group, changelog topics, keys
    app = ROOT / "bench" / "peers_quix_app.py"
    # a name of its own: two runs at once must not stop each other's app by its pid file
    daemon = Daemon(f"{prefix}-changelog-{changelog}", settings.home / "bench")
    state = settings.home / "bench" / "quix-state" / prefix  # its RocksDB, removed after
    arguments = [settings.kafka_bootstrap, topic, prefix, settings.redis_url, prefix, changelog]
    arguments.append(str(state))
    python = quix_python(settings.home)
    spawned = time.time()
    process = daemon.spawn([str(python), str(app), *arguments], cwd=ROOT)

    def value(user: str) -> dict[str, Any] | None:
        raw = client.get(f"{prefix}:{user}")
        return orjson.loads(raw) if raw else None

    def done() -> bool:
        for user in job.last_users.values():
            found = value(user)
            if found is None or found["orders"] + found["views"] < job.totals[user].events:
                return False
        return True

    try:
        wait_until(
            lambda: bool(client.exists(f"{prefix}:first")),
            300,
            "Quix's first event",
            process,
            daemon,
        )
        cpu_first = cpu_seconds(process.pid)
        first = float(client.get(f"{prefix}:first") or 0)
        wait_until(done, 600, "Quix to write every partition's last event", process, daemon)
        finished = time.time()
        cpu = cpu_seconds(process.pid) - cpu_first
    finally:
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)
    users = sorted(job.totals)
    wrong = sum(wrong_values(value(user), job.totals[user]) for user in users)
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        client.unlink(key)
    span = finished - first
    label = f"Quix Streams, changelog {changelog}"
    return Result(label, len(job.events) / span, cpu / span, first - spawned, wrong, len(users))


def rule_file(home: Path, reference: bool) -> Path:
    """The four attributes, alone or after the reference rules."""
    four = yaml.safe_load((ROOT / "bench" / "peers_rules.yaml").read_text())
    if not reference:
        return ROOT / "bench" / "peers_rules.yaml"
    rules = yaml.safe_load((ROOT / "examples" / "rules.yaml").read_text())
    rules["attributes"] += four["attributes"]
    target = Path(tempfile.mkdtemp(dir=home)) / "reference-and-peers.yaml"
    target.write_text(yaml.safe_dump(rules, sort_keys=False))
    return target


def run_traitflow(base: Settings, topic: str, job: Job, reference: bool) -> Result:
    name = f"{topic}-{'reference' if reference else 'four'}"
    rules = rule_file(base.home / "bench", reference)
    # its users log in as a backend's would: the source may link (README, Trusted links)
    settings = base.isolated(
        name, sources={topic: "web"}, source_trust={"web": "trusted"}, rules_path=rules
    )
    client = redis.Redis.from_url(settings.redis_url)
    keys = KeyLayout(settings.key_prefix)
    daemon = Daemon(name, settings.home / "bench")
    command = [sys.executable, "-m", "traitflow", "worker", "--processes", "1"]
    spawned = time.perf_counter()
    process = daemon.spawn([*command, "--loglevel", "warning"], settings.child_env(), ROOT)

    def cpu() -> float:
        return tree_cpu_seconds(process.pid)

    try:
        views = [keys.view("user", user) for user in job.last_users.values()]
        wait_until(
            lambda: bool(client.exists(views[0])), 300, "traitflow's first profile", process, daemon
        )
        first, cpu_first = time.perf_counter(), cpu()
        wait_until(
            lambda: all(
                version(client, settings, u) >= job.totals[u].events
                for u in job.last_users.values()
            ),
            600,
            "traitflow to apply every partition's last event",
            process,
            daemon,
        )
        finished, cpu_done = time.perf_counter(), cpu()
    finally:
        daemon.stop()
        if reference:  # the combined file's temporary directory
            shutil.rmtree(rules.parent, ignore_errors=True)
    users = sorted(job.totals)
    raws = client.mget([keys.view("user", user) for user in users])
    wrong = sum(
        wrong_values(orjson.loads(raw)["attributes"] if raw else None, job.totals[user])
        for user, raw in zip(users, raws, strict=True)
    )
    for key in client.scan_iter(match=keys.all_keys(), count=10_000):
        client.unlink(key)
    span = finished - first
    label = "traitflow, reference rules + the four" if reference else "traitflow, the four"
    return Result(
        label, len(job.events) / span, (cpu_done - cpu_first) / span, first - spawned, wrong,
        len(users),
    )  # fmt: skip


def load() -> str:
    """1, 5 and 15 minute load averages: the machine is shared, so say how busy it was."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--skip-quix", action="store_true", help="traitflow's rows only")
    args = parser.parse_args()

    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    topic = f"peers-{uuid.uuid4().hex[:8]}"
    job = make_job(args.events, args.users, args.seed)
    asyncio.run(create_topic(base, topic, args.partitions))
    last = asyncio.run(publish(base, topic, job.events))
    job.last_users = last
    print(f"load average at start {load()}", flush=True)
    print(
        f"job: {args.events:,} events, {args.users:,} users, {args.partitions} partitions, "
        f"topic {topic}",
        flush=True,
    )

    results: list[Result] = []
    if not args.skip_quix:
        print(f"Quix Streams' virtualenv: {quix_python(base.home).parents[1]}", flush=True)
        results += [run_quix(base, topic, job, "on"), run_quix(base, topic, job, "off")]
    results += [run_traitflow(base, topic, job, False), run_traitflow(base, topic, job, True)]
    quix = results[:2] if not args.skip_quix else []
    for result in results:
        ratio = " / ".join(f"{result.events_per_s / q.events_per_s:.2f}x" for q in quix)
        ratio += " Quix (changelog on / off)" if quix else ""
        print(
            f"{result.name:<40} {result.events_per_s:>8,.0f} events/s  CPU {result.cpu:4.0%}  "
            f"start-up {result.start_up_s:5.2f} s  checked {result.checked}, "
            f"wrong {result.wrong}  {ratio}",
            flush=True,
        )
    print(f"load average at end   {load()}", flush=True)
    drop_topics(base, topic)  # every topic of the run is named after the job's
    if any(result.wrong for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
