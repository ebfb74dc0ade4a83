"""Event -> served: how long after a producer sends an event the records API shows it.

    python -m bench.freshness [--rates 0,2000,5000 --probes 200 --interval-ms 50]

One `traitflow worker` (one process, `examples/rules.yaml`) and one `traitflow api`
run on the embedded services (or those TRAITFLOW_KAFKA_BOOTSTRAP / TRAITFLOW_REDIS_URL
name). For each background rate R (events/s of `bench.pipeline`'s stream, sent in
chunks every 10 ms by a process of its own, 0 = idle), `--probes` probe events go out one every
`--interval-ms`, each an order for one of 20 probe users. A probe's clock starts just
before its send and stops at the first `GET /v1/collections/users/records/user_id/...`
whose `X-Profile-Version` shows it (each probe polls with its own keep-alive
connection, 2 ms apart): producer, broker, worker, Redis and API together, as
personalisation code sees it. Probes overlap when one takes longer than the interval.
The first probes after start-up wait for the consumer group: every run starts with
warm-up probes until one is seen within a second.

Prints, per rate: the rate achieved, p50/p90/p99/max of the probes, and the worker's
CPU share over the run. Half of a worker's capacity: `bench.pipeline`'s rate / 2.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import sys
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaProducer

from bench.api import create_key, wait_for_api
from bench.pipeline import cleanup, cpu_seconds, make_events
from traitflow.config import Settings
from traitflow.services import Daemon, embedded_services, free_port
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
PROBE_USERS = 20
#: background events are sent in a chunk this often
TICK_S = 0.01
#: how often a probe asks the API again
POLL_S = 0.001


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in [0, 1]) of non-empty `values`."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def chunk_sizes(rate: float, tick_s: float, ticks: int) -> list[int]:
    """Events to send at each of `ticks` ticks for `rate` events/s: whole numbers that
    add up to the rate (carrying the fractions), so a low rate is still met."""
    sizes, owed = [], 0.0
    for _ in range(ticks):
        owed += rate * tick_s
        whole = int(owed)
        sizes.append(whole)
        owed -= whole
    return sizes


@dataclass
class Run:
    rate: float
    achieved: float
    latencies_ms: list[float]
    worker_cpu: float
    #: of the same probes: send -> the broker's acknowledgement
    acks_ms: list[float]


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


class Bench:
    def __init__(self, settings: Settings, host: str, port: int, token: str) -> None:
        self.settings = settings
        self.topic = next(iter(settings.sources))
        self.host, self.port = host, port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.producer: AIOKafkaProducer  # made in `main`: it wants a running loop
        self.sequence = itertools.count()
        #: ms from each probe's send to the broker's acknowledgement
        self.acks_ms: list[float] = []

    async def probe(self, timeout_s: float = 30.0) -> float:
        """Send one probe event; ms until the API serves it."""
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
        reader, writer = await asyncio.open_connection(self.host, self.port)
        request = (
            f"GET /v1/collections/users/records/user_id/{user} HTTP/1.1\r\n"
            f"Host: {self.host}\r\nAuthorization: {self.headers['Authorization']}\r\n\r\n"
        ).encode()
        try:
            before = await served_version(reader, writer, request)
            started = time.perf_counter()
            delivery = await self.producer.send(self.topic, orjson.dumps(event), key=user.encode())
            delivery.add_done_callback(
                lambda _: self.acks_ms.append(1000 * (time.perf_counter() - started))
            )
            while await served_version(reader, writer, request) <= before:
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"probe {n} not served within {timeout_s:.0f} s")
                await asyncio.sleep(POLL_S)
            return 1000 * (time.perf_counter() - started)
        finally:
            writer.close()

    async def measure(self, rate: float, probes: int, interval_s: float, worker: int) -> Run:
        seconds = probes * interval_s + 1.0
        cpu, started = cpu_seconds(worker), time.perf_counter()
        self.acks_ms = []
        # the load from a process of its own: this one's loop must only time probes
        sent = multiprocessing.Value("q", 0)
        load = multiprocessing.Process(
            target=background, args=(self.settings.kafka_bootstrap, self.topic, rate, seconds, sent)
        )
        load.start()
        await asyncio.sleep(0.5)  # the load first, then the probes in it
        tasks = []
        for _ in range(probes):
            tasks.append(asyncio.ensure_future(self.probe()))
            await asyncio.sleep(interval_s)
        latencies = list(await asyncio.gather(*tasks))
        await asyncio.to_thread(load.join)
        span = time.perf_counter() - started
        worker_cpu = (cpu_seconds(worker) - cpu) / span
        return Run(rate, sent.value / span, latencies, worker_cpu, self.acks_ms)

    async def main(self, rates: list[float], probes: int, interval_s: float, worker: int) -> None:
        servers = self.settings.kafka_bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0)
        await self.producer.start()
        try:
            while await self.probe(timeout_s=60) > 1000:  # warm-up: the group has formed
                pass
            for rate in rates:
                run = await self.measure(rate, probes, interval_s, worker)
                report(run)
        finally:
            await self.producer.stop()


def background(bootstrap: str, topic: str, rate: float, seconds: float, sent: Any) -> None:
    """In a process of its own: `rate` events/s of `bench.pipeline`'s stream for
    `seconds`, in chunks every `TICK_S`; the count sent goes to `sent`."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            events, _ = make_events(50_000, 10_000, seed=5)
            source = itertools.cycle(events)
            ticks = int(seconds / TICK_S)
            started = time.perf_counter()
            partitions = sorted(await producer.partitions_for(topic))
            for tick, size in enumerate(chunk_sizes(rate, TICK_S, ticks)):
                # one batch per partition and tick: per-message sends would cost this
                # process more CPU than the worker spends on the events
                batches = {p: producer.create_batch() for p in partitions}
                for _ in range(size):
                    key, value = next(source)
                    partition = partitions[zlib.crc32(key) % len(partitions)]
                    batches[partition].append(key=key, value=value, timestamp=None)
                for partition, batch in batches.items():
                    if batch.record_count():
                        await producer.send_batch(batch, topic, partition=partition)
                sent.value += size
                delay = started + (tick + 1) * TICK_S - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
        finally:
            await producer.stop()

    asyncio.run(run())


def report(run: Run) -> None:
    lat = run.latencies_ms
    print(
        f"load {run.rate:>6,.0f} events/s (achieved {run.achieved:,.0f})  probes {len(lat)}  "
        f"p50 {percentile(lat, 0.5):.1f} ms  p90 {percentile(lat, 0.9):.1f} ms  "
        f"p99 {percentile(lat, 0.99):.1f} ms  max {max(lat):.1f} ms  "
        f"worker CPU {run.worker_cpu:.0%}  (produce acked: p50 {percentile(run.acks_ms, 0.5):.1f} "
        f"ms, p99 {percentile(run.acks_ms, 0.99):.1f} ms)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="0,2000,5000", help="background events/s, listed")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=50)
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]

    base = Settings()
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"fresh-{uuid.uuid4().hex[:8]}",
        topic_partitions=8,
        rules_path=ROOT / "examples" / "rules.yaml",
        api_rate_per_s=1e9,
        api_burst=1_000_000_000,
    )
    asyncio.run(ensure_topics(settings))
    token = asyncio.run(create_key(settings))
    port = free_port()
    home = settings.home / "bench"
    worker, api = Daemon("fresh-worker", home), Daemon("fresh-api", home)
    env = settings.child_env()
    command = [sys.executable, "-m", "traitflow"]
    process = worker.spawn(
        [*command, "worker", "--processes", "1", "--loglevel", "warning"], env, ROOT
    )
    api.spawn([*command, "api", "--port", str(port)], env, ROOT)
    try:
        wait_for_api(f"http://127.0.0.1:{port}")
        bench = Bench(settings, "127.0.0.1", port, token)
        asyncio.run(bench.main(rates, args.probes, args.interval_ms / 1000, process.pid))
    finally:
        worker.stop()
        api.stop()
        cleanup(redis.Redis.from_url(settings.redis_url), settings)


if __name__ == "__main__":
    main()
