"""What TRAITFLOW_REDIS_SYNC costs per batch: the write of a batch, then the wait.

    python -m bench.durability [--batches 300 --profiles 200 --bytes 1500]
    python -m bench.durability --pipeline [--events 100000 --rounds 2]
    python -m bench.durability --broker [--events 100000 --rounds 2]

Starts redis-servers of its own (never the embedded one), each with the AOF on:
`everysec` (the embedded default), `always`, and `everysec` with one replica. For each
setting it writes `--batches` batches the size of a worker's (one MULTI/EXEC of
`--profiles` state and view values of `--bytes` each, as the worker commits), then
runs `traitflow.durability.DurabilityWait` as the worker does after each batch, and
prints the milliseconds of the write and of the wait (mean, p50, p99). The write
column is where `appendfsync always` costs: the fsync is in every write's reply.

`--pipeline` runs `bench.pipeline` (real worker, real broker) against each setting
instead, in `--rounds` interleaved rounds, on a broker and redis-servers of its own,
and prints each run's events/s: what the setting costs end to end. `--broker` does the
same with the broker's storage instead (TRAITFLOW_BROKER_STORAGE: memory, disk), and
prints each broker's start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from traitflow.durability import DurabilityWait
from traitflow.services import Service, free_port

ROOT = Path(__file__).resolve().parents[1]


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.fmean(ordered):6.2f} {statistics.median(ordered):6.2f} {p99:6.2f}"


async def measure(url: str, sync: str, batches: int, profiles: int, size: int) -> str:
    client = aioredis.Redis.from_url(url)
    durable = DurabilityWait.from_url(url, "tfbench-sync", sync, 5.0)
    value = b"x" * size
    writes, waits = [], []
    try:
        for n in range(batches):
            started = time.perf_counter()
            async with client.pipeline(transaction=True) as pipe:
                pipe.mset({f"tfbench-sync:{p}": value + str(n).encode() for p in range(profiles)})
                await pipe.execute()
            written = time.perf_counter()
            if durable.waits:
                await durable.wait()
            writes.append((written - started) * 1000)
            waits.append((time.perf_counter() - written) * 1000)
        await client.delete(*(f"tfbench-sync:{p}" for p in range(profiles)))
    finally:
        await durable.close()
        await client.aclose()
    return f"write {summary(writes)} | wait {summary(waits)}"


def pipeline(brokers: list[Service], runs: list[tuple[str, Service, str]], events: int) -> None:
    """One `bench.pipeline` run per setting (and broker); prints its throughput and
    check."""
    for (name, service, sync), broker in itertools.product(runs, brokers):
        if len(brokers) > 1:
            name = f"broker storage {broker.storage}"
        env = {
            "TRAITFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker.port}",
            "TRAITFLOW_REDIS_URL": f"redis://127.0.0.1:{service.port}/0",
            "TRAITFLOW_REDIS_SYNC": sync,
        }
        done = subprocess.run(
            [sys.executable, "-m", "bench.pipeline", "--events", str(events)],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("TRAITFLOW_")} | env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [
            line
            for line in done.stdout.splitlines()
            if line.startswith(("produce", "throughput", "profiles checked"))
        ]
        print(f"{name:44} {' | '.join(lines) or done.stderr[-500:]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--profiles", type=int, default=200)
    parser.add_argument("--bytes", type=int, default=1500)
    parser.add_argument("--pipeline", action="store_true", help="end to end instead")
    parser.add_argument("--broker", action="store_true", help="end to end, per broker storage")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        everysec = Service("redis", Path(home, "everysec"), port=free_port())
        always = Service(
            "redis", Path(home, "always"), port=free_port(), options=("--appendfsync", "always")
        )
        replica = Service(
            "redis", Path(home, "replica"), port=free_port(), options=("--appendonly", "no")
        )
        brokers = [
            Service("broker", Path(home, f"broker-{kind}"), port=free_port(), storage=kind)
            for kind in (("memory", "disk") if args.broker else ("memory",))
        ]
        end_to_end = args.pipeline or args.broker
        services = [everysec, always, replica, *(brokers if end_to_end else [])]
        try:
            for service in services:
                started = time.perf_counter()
                service.start()
                if service.name == "broker":
                    took = time.perf_counter() - started
                    print(f"broker ({service.storage}) listening after {took:.2f} s")
            redis.Redis(port=replica.port).replicaof("127.0.0.1", everysec.port)
            while redis.Redis(port=replica.port).info("replication")["master_link_status"] != "up":
                time.sleep(0.05)
            runs = [
                ("appendfsync everysec / none", everysec, "none"),
                ("appendfsync everysec + replica / replicas:1", everysec, "replicas:1"),
                ("appendfsync always / disk", always, "disk"),
                ("appendfsync always / none", always, "none"),
            ]
            if end_to_end:
                for _ in range(args.rounds):
                    pipeline(brokers, runs[:1] if args.broker else runs, args.events)
                return
            print(f"{args.batches} batches of {args.profiles} values of {args.bytes} B; ms:")
            print(
                f"{'Redis / TRAITFLOW_REDIS_SYNC':44} mean    p50    p99  |      mean    p50    p99"
            )
            for name, service, sync in runs:
                url = f"redis://127.0.0.1:{service.port}/0"
                result = asyncio.run(measure(url, sync, args.batches, args.profiles, args.bytes))
                print(f"{name:44} {result}")
        finally:
            for service in services:
                service.stop()


if __name__ == "__main__":
    main()
