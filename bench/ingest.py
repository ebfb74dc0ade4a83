"""HTTP ingest benchmark: accepted events/s per API process (issue 15, point 6).

    python -m bench.ingest --duration 10 --connections 32 --batch 20

Starts the embedded broker and Redis (unless the environment names its own), one
`traitflow api` process with a write key, and runs wrk (Debian package) on loopback
against `POST /v1/track` (one event a call) and `POST /v1/batch` (`--batch` events a
call), each call for a random one of `--users` users. Every call is acknowledged only
after the broker acknowledged its events (`acks=all`), so a 200 counts as accepted:
wrk stops the run on any other answer. Reported per endpoint: calls/s and events/s at
saturation, p50/p99 per call, the records the run published (read back from the
topic's end offsets) and the API process's CPU seconds per 1,000 of them.

`--pin` puts the API process on a core of its own (the last), and wrk, the broker and
Redis on the others. No worker runs: what is measured is the API's side of ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.api import Target, wait_for_api, wrk
from bench.pipeline import drop_topics, tree_cpu_seconds
from traitflow.config import Settings
from traitflow.services import Daemon, embedded_services, free_port
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]

LUA_TRACK = """
math.randomseed(%(seed)d)
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "%(authorization)s"}
request = function()
  local body = '{"userId":"bench-user-' .. math.random(0, %(last)d) .. '",' ..
    '"event":"Order Completed","properties":{"revenue":' .. math.random(1, 500) ..
    ',"product_id":"sku-' .. math.random(1, 50) .. '"},' ..
    '"context":{"library":{"name":"bench","version":"1"}}}'
  return wrk.format("POST", "/v1/track", headers, body)
end
"""

LUA_BATCH = """
math.randomseed(%(seed)d)
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "%(authorization)s"}
request = function()
  local events = {}
  for i = 1, %(batch)d do
    events[i] = '{"type":"track","userId":"bench-user-' .. math.random(0, %(last)d) .. '",' ..
      '"event":"Order Completed","properties":{"revenue":' .. math.random(1, 500) ..
      ',"product_id":"sku-' .. math.random(1, 50) .. '"}}'
  end
  local body = '{"batch":[' .. table.concat(events, ",") .. '],' ..
    '"context":{"library":{"name":"bench","version":"1"}}}'
  return wrk.format("POST", "/v1/batch", headers, body)
end
"""


def records_on(settings: Settings, topic: str) -> int:
    """Records on `topic`: the sum of its partitions' end offsets (a fresh topic)."""

    async def count() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        await consumer.start()
        try:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            return sum((await consumer.end_offsets(partitions)).values())
        finally:
            await consumer.stop()

    return asyncio.run(count())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=20, help="events per /v1/batch call")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="API process on the last core; wrk, the broker and Redis on the others",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: `make setup` installs it")

    base = Settings.from_environ(os.environ)
    services = embedded_services(base)
    for service in services:
        service.start()
    run = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    write_key = f"wk-{uuid.uuid4().hex}"
    isolated = base.isolated(run)
    topic, source = next(iter(isolated.sources.items()))  # the first ingest topic
    settings = isolated.model_copy(
        update={"write_keys": {hashlib.sha256(write_key.encode()).hexdigest(): source}}
    )
    asyncio.run(ensure_topics(settings))
    cores = sorted(os.sched_getaffinity(0))
    api_cores, other_cores = ({cores[-1]}, set(cores[:-1])) if args.pin else (set(), set())

    port = free_port()
    daemon = Daemon("bench-ingest-api", settings.home / "bench")
    if api_cores:  # children inherit this process's affinity: the API, then wrk
        os.sched_setaffinity(0, api_cores)
    process = daemon.spawn(
        [sys.executable, "-m", "traitflow", "api", "--port", str(port)],
        settings.child_env(),
        ROOT,
    )
    if other_cores:
        os.sched_setaffinity(0, other_cores)
        for service in services:
            if (pid := service.pid()) is not None:
                os.sched_setaffinity(pid, other_cores)
    url = f"http://127.0.0.1:{port}"
    authorization = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    values: dict[str, Any] = {
        "seed": 42,
        "last": args.users - 1,
        "authorization": authorization,
        "batch": args.batch,
    }
    try:
        wait_for_api(url)
        probe = httpx.post(
            f"{url}/v1/track",
            headers={"Authorization": authorization},
            json={"userId": "bench-user-0", "event": "Probe"},
            timeout=30,
        )
        assert probe.status_code == 200, probe.text
        acknowledged = 1
        print(
            f"1 API process{' on its own core' * args.pin}, wrk -t1 -c{args.connections} "
            f"{args.duration}s, {args.users} users, acks=all"
        )
        for target, per_call in (
            (Target("POST /v1/track", "", LUA_TRACK), 1),
            (Target(f"POST /v1/batch ({args.batch} events)", "", LUA_BATCH), args.batch),
        ):
            cpu_before = tree_cpu_seconds(process.pid)
            before = records_on(settings, topic)
            result = wrk(url, target, values, args.duration, args.connections)
            added = records_on(settings, topic) - before
            cpu = tree_cpu_seconds(process.pid) - cpu_before
            events_per_s = result["rps"] * per_call
            acknowledged += added
            print(
                f"{target.label:<28} {result['rps']:>7,.0f} calls/s  {events_per_s:>8,.0f} "
                f"events/s  p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  "
                f"API CPU {1000 * cpu / max(added, 1):.3f} s per 1,000 events "
                f"({added:,} records published)"
            )
        on_topic = records_on(settings, topic)
        # wrk's last calls may be answered after it stopped counting: at least as many
        print(f"on the topic: {on_topic:,} records; published while measured: {acknowledged:,}")
    finally:
        daemon.stop()
        drop_topics(settings, run)


if __name__ == "__main__":
    main()
