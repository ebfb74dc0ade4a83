"""Event -> served: how long after a producer sends an event the records API shows it.

    python -m bench.freshness [--rates 0,2000,5000 | --rate R ...] [--probes 200]
        [--probe-interval-ms 50] [--via api|redis]

One `traitflow worker` (one process, `examples/rules.yaml`) and one `traitflow api`
run on the embedded services (or those TRAITFLOW_KAFKA_BOOTSTRAP / TRAITFLOW_REDIS_URL
name). For each background rate R (events/s of `bench.pipeline`'s stream, sent in
chunks every 10 ms by a process of its own, 0 = idle), `--probes` probe events go out
one every `--probe-interval-ms`, each an order for one of 20 probe users. A probe's
clock starts just before its send and stops at the first
`GET /v1/collections/users/records/user_id/...` whose `X-Profile-Version` is above the
one served before the send (each probe polls with its own keep-alive connection, 1 ms
apart): producer, broker, worker, Redis and API together, as personalisation code sees
it. Probes overlap when one takes longer than the interval. Start-up is not measured:
warm-up probes go out until one is served within a second.

`--via redis` polls the profile's stored view in Redis (`GET`, same 1 ms) instead of
the API: the difference between the two is what the API adds.

Prints, per rate: the rate achieved, the probes sent and seen, p50/p90/p99/max, the
produce acknowledgement of the same probes, the worker's CPU share over the run and
its batches (from its Prometheus metrics: how many, records and ms each, share of the
run spent in them), how long its threads were runnable but had no core (schedstat:
on a shared 2-core machine a batch's wall time is partly waiting for a core), and how
busy the machine's cores were. Half of a worker's capacity: `bench.pipeline`'s rate / 2.
Exits 1 when a probe was not served within `--timeout-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from api.caching import view_version
from bench.api import create_key, wait_for_api
from bench.pipeline import cleanup, counters, cpu_seconds, drop_topics, make_events, trusted
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon, embedded_services, free_port
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
PROBE_USERS = 20
#: background events are sent in a chunk this often
TICK_S = 0.01
#: how often a probe asks the API again
POLL_S = 0.001
#: the worker's metrics read before and after each rate
METRICS = (
    "traitflow_records_total",
    "traitflow_batch_seconds_count",
    "traitflow_batch_seconds_sum",
)

#: one read of a probe user's profile: its served version (0 = none)
Read = Callable[[], Awaitable[int]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in [0, 1]) of non-empty `values`."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def paced(rate: float, tick_s: float) -> Iterator[int]:
    """Events to send at each tick, one tick every `tick_s`, for `rate` events/s: whole
    numbers that add up to the rate (the fractions carried), so a low rate is still met
    and a high one comes evenly, without bursts. Endless."""
    owed = 0.0
    while True:
        owed += rate * tick_s
        whole = int(owed)
        owed -= whole
        yield whole


def chunk_sizes(rate: float, tick_s: float, ticks: int) -> list[int]:
    """The first `ticks` of `paced`."""
    return list(itertools.islice(paced(rate, tick_s), ticks))


def parse_rates(lists: Sequence[str], single: Sequence[float]) -> list[float]:
    """The background rates, in order: each `--rates` list (comma-separated), then each
    `--rate`; 0, 2000 and 5000 when neither is given."""
    rates = [float(r) for text in lists for r in text.split(",") if r.strip()] + list(single)
    if any(rate < 0 for rate in rates):
        raise ValueError(f"a rate is events/s, 0 or more: {rates}")
    return rates or [0.0, 2000.0, 5000.0]


@dataclass
class Run:
    rate: float
    achieved: float
    span_s: float
    sent: int
    #: ms from send to served, of the probes served within the timeout
    latencies_ms: list[float]
    #: of the same probes: send -> the broker's acknowledgement
    acks_ms: list[float]
    worker_cpu: float
    #: share of the run the worker's threads were runnable but had no core
    worker_waited: float
    #: share of all cores' time busy, everything on the machine
    machine_busy: float
    #: the worker's metrics over the run (differences)
    records: float
    batches: float
    batch_s: float


async def served_version(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One GET on a kept-alive connection: the `X-Profile-Version` served (0: none).
    Bytes on a socket, not an HTTP client: on 2 cores the poller's own CPU would be
    what delays the worker."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return int(fields.get(b"x-profile-version", b"0"))


def run_queue_s(pid: int) -> float:
    """Seconds the threads of `pid` have spent runnable but waiting for a core
    (`/proc/<pid>/task/*/schedstat`, its second field): CPU contention, not work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot (`/proc/stat`)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def resp_command(*parts: bytes) -> bytes:
    """A Redis command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def stored_version(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: bytes
) -> int:
    """One `GET` of a stored view in Redis: its version (0: none)."""
    writer.write(command)
    header = await reader.readline()
    if not header.startswith(b"$"):
        raise RuntimeError(f"Redis answered {header!r}")
    size = int(header[1:])
    if size < 0:
        return 0
    return view_version((await reader.readexactly(size + 2))[:-2]) or 0


def redis_probe_commands(settings: Settings, user: str) -> list[bytes]:
    """The commands a probe's Redis connection sends: AUTH with the settings' or the
    URL's password (the embedded Redis has one: README, "Secured Redis") and SELECT
    when the URL names a database, then last the `GET` of `user`'s view that each poll
    repeats. Pure, so a test can check that the GET names the probed user's view."""
    commands = []
    url = urlsplit(settings.redis_url)
    password = (
        settings.redis_password.get_secret_value()
        if settings.redis_password is not None
        else unquote(url.password or "")
    )
    if password:
        login = settings.redis_username or unquote(url.username or "") or "default"
        commands.append(resp_command(b"AUTH", login.encode(), password.encode()))
    db = settings.redis_url.rstrip("/").rpartition("/")[2]
    if db.isdigit() and db != "0":
        commands.append(resp_command(b"SELECT", db.encode()))
    key = KeyLayout(settings.key_prefix).view("user", user).encode()
    return [*commands, resp_command(b"GET", key)]


class Bench:
    def __init__(
        self, settings: Settings, host: str, port: int, token: str, via: str = "api"
    ) -> None:
        self.settings = settings
        self.topic = next(iter(settings.sources))
        self.host, self.port = host, port
        self.token = token
        self.via = via
        self.producer: AIOKafkaProducer  # made in `main`: it wants a running loop
        self.sequence = itertools.count()
        #: ms from each probe's send to the broker's acknowledgement
        self.acks_ms: list[float] = []

    async def connect(self, user: str) -> tuple[asyncio.StreamWriter, Read]:
        """A kept-alive connection for one probe, and its read of `user`'s version."""
        if self.via == "redis":
            host, port = self.settings.redis_host_port
            reader, writer = await asyncio.open_connection(host, port)
            *setup, command = redis_probe_commands(self.settings, user)
            for step in setup:  # AUTH, SELECT: each answered +OK
                writer.write(step)
                if not (answer := await reader.readline()).startswith(b"+OK"):
                    raise RuntimeError(f"Redis refused the bench's {step.split()[2]!r}: {answer!r}")
            return writer, lambda: stored_version(reader, writer, command)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        request = (
            f"GET /v1/collections/users/records/user_id/{user} HTTP/1.1\r\n"
            f"Host: {self.host}\r\nAuthorization: Bearer {self.token}\r\n\r\n"
        ).encode()
        return writer, lambda: served_version(reader, writer, request)

    async def probe(self, timeout_s: float) -> float | None:
        """Send one probe event; ms until it is served (None: not within `timeout_s`)."""
        n = next(self.sequence)
        user = f"probe-{n % PROBE_USERS}"
        event = {
            "type": "track",
            "event": "Order Completed",
            "userId": user,
            "messageId": f"probe-{uuid.uuid4().hex}",
            "properties": {"revenue": 1.0},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        writer, read = await self.connect(user)
        try:
            before = await read()
            started = time.perf_counter()
            delivery = await self.producer.send(self.topic, orjson.dumps(event), key=user.encode())
            delivery.add_done_callback(
                lambda _: self.acks_ms.append(1000 * (time.perf_counter() - started))
            )
            while await read() <= before:
                if time.perf_counter() - started > timeout_s:
                    return None
                await asyncio.sleep(POLL_S)
            return 1000 * (time.perf_counter() - started)
        finally:
            writer.close()

    async def measure(
        self,
        rate: float,
        probes: int,
        interval_s: float,
        timeout_s: float,
        worker: int,
        metrics_port: int,
    ) -> Run:
        # the load from a process of its own: this one's loop must only time probes
        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        sent, elapsed = multiprocessing.Value("q", 0), multiprocessing.Value("d", 0.0)
        load = multiprocessing.Process(
            target=background,
            args=(self.settings.kafka_bootstrap, self.topic, rate, ready, stop, sent, elapsed),
        )
        load.start()
        if not await asyncio.to_thread(ready.wait, 60):
            load.kill()
            raise RuntimeError("the background load did not start within 60 s")
        await asyncio.sleep(0.5)  # the load first, then the probes in it
        before = await asyncio.to_thread(counters, [metrics_port], METRICS)
        cpu, waited, machine = cpu_seconds(worker), run_queue_s(worker), machine_ticks()
        started = time.perf_counter()
        self.acks_ms = []
        tasks = []
        for _ in range(probes):
            tasks.append(asyncio.ensure_future(self.probe(timeout_s)))
            await asyncio.sleep(interval_s)
        results = await asyncio.gather(*tasks)
        span = time.perf_counter() - started
        worker_cpu = (cpu_seconds(worker) - cpu) / span
        worker_waited = (run_queue_s(worker) - waited) / span
        busy, ticks = (now - then for now, then in zip(machine_ticks(), machine, strict=True))
        after = await asyncio.to_thread(counters, [metrics_port], METRICS)
        stop.set()
        await asyncio.to_thread(load.join)
        records, batches, batch_s = (after[name] - before[name] for name in METRICS)
        return Run(
            rate=rate,
            achieved=sent.value / elapsed.value if elapsed.value else 0.0,
            span_s=span,
            sent=probes,
            latencies_ms=[ms for ms in results if ms is not None],
            acks_ms=list(self.acks_ms),
            worker_cpu=worker_cpu,
            worker_waited=worker_waited,
            machine_busy=busy / ticks if ticks else 0.0,
            records=records,
            batches=batches,
            batch_s=batch_s,
        )

    async def main(
        self,
        rates: list[float],
        probes: int,
        interval_s: float,
        timeout_s: float,
        worker: int,
        metrics_port: int,
    ) -> bool:
        """Every rate measured and reported; whether every probe was served."""
        servers = self.settings.kafka_bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0)
        await self.producer.start()
        everything_seen = True
        try:
            deadline = time.monotonic() + 60
            while (warm := await self.probe(timeout_s=30)) is None or warm > 1000:
                if time.monotonic() > deadline:  # warm-up: until the group has formed
                    raise TimeoutError("no probe served within a second after 60 s")
            for rate in rates:
                run = await self.measure(rate, probes, interval_s, timeout_s, worker, metrics_port)
                report(run, self.via)
                everything_seen &= len(run.latencies_ms) == run.sent
        finally:
            await self.producer.stop()
        return everything_seen


def unique_messages(
    events: Sequence[tuple[bytes, bytes]], run: str
) -> Iterator[tuple[bytes, bytes]]:
    """`events` over and over, endless, each pass's messageIds prefixed `run-pass-`: a
    messageId the worker has seen is a producer's retry to it, skipped as a duplicate
    (not applied), so a stream that repeated them, or the ids of `make_events` that
    another stream on the same topic (a benchmark's history) used, would load the
    worker less than its rate says, and make a backfill count an event on one side
    only (it keeps the first of an id it reads, the live worker the first it applied)."""
    for n in itertools.count():
        prefix = f'"messageId":"{run}-{n}-'.encode()
        for key, value in events:
            yield key, value.replace(b'"messageId":"', prefix, 1)


def background(
    bootstrap: str, topic: str, rate: float, ready: Any, stop: Any, sent: Any, elapsed: Any
) -> None:
    """In a process of its own: `rate` events/s of `bench.pipeline`'s stream, in chunks
    every `TICK_S`, from when it sets `ready` until `stop` is set; the count sent goes
    to `sent`, the seconds it paced them over to `elapsed`."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            events, _ = make_events(50_000, 10_000, seed=5)
            source = unique_messages(events, uuid.uuid4().hex[:8])
            partitions = sorted(await producer.partitions_for(topic))
            # the partition Kafka's own producers would choose, so that a user's events
            # stay on one partition as in `traitflow produce` and the history publish
            choose = DefaultPartitioner()
            ready.set()
            started = time.perf_counter()
            for tick, size in enumerate(paced(rate, TICK_S)):
                if stop.is_set():
                    break
                # one batch per partition and tick: per-message sends would cost this
                # process more CPU than the worker spends on the events
                batches = {p: producer.create_batch() for p in partitions}
                for _ in range(size):
                    key, value = next(source)
                    partition = choose(key, partitions, partitions)
                    batches[partition].append(key=key, value=value, timestamp=None)
                for partition, batch in batches.items():
                    if batch.record_count():
                        await producer.send_batch(batch, topic, partition=partition)
                sent.value += size
                delay = started + (tick + 1) * TICK_S - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
            elapsed.value = time.perf_counter() - started
        finally:
            await producer.stop()

    asyncio.run(run())


def report(run: Run, via: str = "api") -> None:
    lat, acks = run.latencies_ms, run.acks_ms
    lines = [
        f"load {run.rate:,.0f} events/s: achieved {run.achieved:,.0f} events/s; "
        f"probes over {run.span_s:.1f} s",
        f"  probes   {run.sent} sent, {len(lat)} seen (read through the {via})",
    ]
    if lat:
        lines.append(
            f"  served   p50 {percentile(lat, 0.5):.1f} ms  p90 {percentile(lat, 0.9):.1f} ms  "
            f"p99 {percentile(lat, 0.99):.1f} ms  max {max(lat):.1f} ms"
        )
    if acks:
        lines.append(
            f"  acked    p50 {percentile(acks, 0.5):.1f} ms  p99 {percentile(acks, 0.99):.1f} ms"
            "  (send -> the broker's acknowledgement)"
        )
    per_batch = (
        f", {run.records / run.batches:,.1f} records and {1000 * run.batch_s / run.batches:.1f} "
        f"ms each, in batches {run.batch_s / run.span_s:.0%} of the time"
        if run.batches
        else ""
    )
    lines.append(
        f"  worker   CPU {run.worker_cpu:.0%} of a core; {run.batches:,.0f} batches{per_batch}"
    )
    lines.append(
        f"  cores    the worker waited for a core {run.worker_waited:.0%} of the time; "
        f"the machine's {os.cpu_count()} cores {run.machine_busy:.0%} busy"
    )
    print("\n".join(lines), flush=True)


def worker_command() -> list[str]:
    """`traitflow worker` as one process: `--processes 1` where the command has it."""
    command = [sys.executable, "-m", "traitflow", "worker"]
    usage = subprocess.run(
        [*command, "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    return [*command, *(["--processes", "1"] if "--processes" in usage else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rates", action="append", default=[], help="background events/s, comma-separated"
    )
    parser.add_argument(
        "--rate", action="append", type=float, default=[], help="one background rate; repeatable"
    )
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument(
        "--probe-interval-ms", "--interval-ms", dest="interval_ms", type=float, default=50
    )
    parser.add_argument("--timeout-s", type=float, default=30, help="per probe")
    parser.add_argument(
        "--via", choices=["api", "redis"], default="api", help="where probes look for the event"
    )
    args = parser.parse_args()
    try:
        rates = parse_rates(args.rates, args.rate)
    except ValueError as error:
        parser.error(str(error))

    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"fresh-{uuid.uuid4().hex[:8]}",
        topic_partitions=8,
        rules_path=ROOT / "examples" / "rules.yaml",
        api_rate_per_s=1e9,
        api_burst=1_000_000_000,
        source_trust=trusted(base),
    )
    asyncio.run(ensure_topics(settings))
    token = asyncio.run(create_key(settings))
    port, metrics_port = free_port(), free_port()
    home = settings.home / "bench"
    worker, api = Daemon("fresh-worker", home), Daemon("fresh-api", home)
    env = settings.child_env()
    command = worker_command()
    print(
        f"worker: {' '.join(command[1:])}, fetch wait {settings.fetch_wait} ms, "
        f"broker {settings.kafka_bootstrap}"
        f"{'' if settings.kafka_is_external else f' ({settings.broker_storage} storage)'}",
        flush=True,
    )
    worker_env = env | {"TRAITFLOW_WORKER_METRICS_PORT": str(metrics_port)}
    process = worker.spawn([*command, "--loglevel", "warning"], worker_env, ROOT)
    api.spawn([sys.executable, "-m", "traitflow", "api", "--port", str(port)], env, ROOT)
    try:
        wait_for_api(f"http://127.0.0.1:{port}")
        bench = Bench(settings, "127.0.0.1", port, token, args.via)
        seen = asyncio.run(
            bench.main(
                rates,
                args.probes,
                args.interval_ms / 1000,
                args.timeout_s,
                process.pid,
                metrics_port,
            )
        )
    finally:
        worker.stop()
        api.stop()
        cleanup(redis.Redis.from_url(settings.redis_url), settings)
        drop_topics(settings, settings.app_id)
    if not seen:
        sys.exit(f"some probes were not served within {args.timeout_s:.0f} s")


if __name__ == "__main__":
    main()
