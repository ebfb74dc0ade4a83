"""Export rate: profiles/s of an export job (`traitflow.export_run.run_job`), and what
each costs Redis.

    python -m bench.export [--profiles 50000]

A redis-server and a memory-storage Tansu broker of its own (free ports, a temporary
directory) hold `--profiles` profiles as the worker lays them out: a view of about a
kilobyte (`tf:v`), a state, a version and two index keys each, so that the SCAN also
walks keys it does not export. A quarter are in the audience `vip`. Each run is
unpaced (`rate` far above what it reaches) unless it says so; Redis's own CPU per
profile is read from INFO commandstats (SCAN and MGET) before and after. Beside each
run, another process reads one view every millisecond and reports its latencies: what
an export does to live reads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

from traitflow.config import Settings
from traitflow.export_jobs import ExportSpec
from traitflow.export_run import run_job
from traitflow.export_store import ExportJobs
from traitflow.key_layout import KeyLayout
from traitflow.resp import RespClient
from traitflow.services import Service, free_port


def a_view(i: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"u-{i}",
            "entity": "user",
            "identities": {"user_id": [f"u-{i}"], "email": [f"user{i}@example.com"]},
            "traits": {"email": f"user{i}@example.com", "name": f"User {i}", "plan": "pro"},
            "attributes": {
                "lifetime_value": i * 1.5,
                "purchase_count": i % 17,
                "largest_order": 120.0,
                "last_product": f"sku-{i % 97}",
                "recently_viewed": [f"sku-{i % 7}", f"sku-{i % 11}", f"sku-{i % 13}"],
                "favourite_category": "kitchen",
                "orders_last_30_days": i % 5,
                "loyal": i % 2 == 0,
            },
            "_audiences": {"vip": i % 4 == 0, "recent_buyers": i % 3 == 0},
            "first_seen": "2026-11-01T10:43:50.971Z",
            "last_seen": "2026-11-23T13:13:50.971Z",
            "version": 11,
        }
    )


def fill(client: redis.Redis, keys: KeyLayout, profiles: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(profiles):
        pid = f"u-{i}"
        pipe.set(keys.view("user", pid), a_view(i))
        pipe.set(keys.state("user", pid), b"s" * 300)
        pipe.set(keys.version("user", pid), 11)
        pipe.set(keys.index("user", "user_id", pid), pid)
        pipe.set(keys.index("user", "email", f"user{i}@example.com"), pid)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.hset(keys.audience_sizes("user"), "vip", (profiles + 3) // 4)


def redis_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    return sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("scan", "mget"))


async def one_run(settings: Settings, spec: ExportSpec) -> tuple[float, int]:
    client = RespClient.from_url(settings.redis_url)
    try:
        job = await ExportJobs(client, settings.key_prefix).create(spec)
        started = time.perf_counter()
        ended = await run_job(client, settings, job.id)
        seconds = time.perf_counter() - started
        assert ended.status == "SUCCEEDED", ended.error
        return seconds, ended.checkpoint.exported
    finally:
        await client.close()


def probe(url: str, key: str) -> None:
    """A light reader beside the export: a GET of one view every millisecond, on a
    connection of its own, until SIGTERM; prints its latencies (µs) as JSON."""
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    client = redis.Redis.from_url(url)
    took: list[float] = []
    while not stop:
        started = time.perf_counter()
        client.get(key)
        took.append((time.perf_counter() - started) * 1e6)
        time.sleep(0.001)
    took.sort()

    def at(share: float) -> float:
        return took[min(len(took) - 1, int(share * len(took)))]

    print(orjson.dumps({"p50": at(0.5), "p99": at(0.99), "max": took[-1]}).decode())


class Probe:
    """`probe` in a process of its own while a run goes on."""

    def __init__(self, url: str, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.export", "--probe", url, key], stdout=subprocess.PIPE
        )
        time.sleep(0.5)  # connected and reading

    def stop(self) -> str:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        seen = orjson.loads(out)
        return f"reads p50 {seen['p50']:.0f} µs, p99 {seen['p99']:.0f} µs, max {seen['max']:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    home = Path(tempfile.mkdtemp(prefix="bench-export-"))
    store = Service("redis", home / "redis", "127.0.0.1", free_port())
    broker = Service("broker", home / "broker", "127.0.0.1", free_port())
    store.start()
    broker.start()
    try:
        settings = Settings.from_environ(
            {},
            redis_url=f"redis://127.0.0.1:{store.port}/0",
            kafka_bootstrap=f"127.0.0.1:{broker.port}",
            export_dir=home / "exports",
            home=home,
        )
        client = redis.Redis.from_url(settings.redis_url)
        fill(client, KeyLayout(settings.key_prefix), args.profiles)
        print(
            f"{args.profiles:,} profiles, {client.dbsize():,} keys; load {os.getloadavg()[0]:.1f}"
        )
        read = KeyLayout(settings.key_prefix).view("user", "u-7")
        idle = Probe(settings.redis_url, read)
        time.sleep(3.0)
        print(f"{'no export (3 s)':36} {idle.stop()}")
        runs = [
            ("all, file, batch 100", None, "file", 1e9, 100),
            ("all, file, batch 500", None, "file", 1e9, 500),
            ("all, file, batch 2000", None, "file", 1e9, 2000),
            ("vip (a quarter), file, batch 500", "vip", "file", 1e9, 500),
            ("all, topic, batch 500", None, "topic", 1e9, 500),
            ("all, file, batch 500, rate 5000/s", None, "file", 5000.0, 500),
        ]
        for n, (what, audience, destination, rate, batch) in enumerate(runs):
            target = f"run-{n}.ndjson" if destination == "file" else f"bench-export-{n}"
            spec = ExportSpec("user", audience, destination, target, rate, batch)  # type: ignore[arg-type]
            beside = Probe(settings.redis_url, read)
            before = redis_usec(client)
            seconds, exported = asyncio.run(one_run(settings, spec))
            used = redis_usec(client) - before
            print(
                f"{what:36} {exported:>7,} exported in {seconds:5.2f} s: "
                f"{exported / seconds:8,.0f} profiles/s, {args.profiles / seconds:8,.0f} "
                f"views read/s; Redis {used / args.profiles:5.1f} µs CPU per view read; "
                f"{beside.stop()}"
            )
        client.close()
    finally:
        broker.stop()
        store.stop()


if __name__ == "__main__":
    main()
