"""Treasure Data's call: how long `POST /{database}/{table}` takes, end to end.

    python -m bench.td [--calls 300] [--users 20]

One `traitflow worker` (one process, `examples/rules.yaml`) and one `traitflow api`
run on the embedded services (or those TRAITFLOW_KAFKA_BOOTSTRAP / TRAITFLOW_REDIS_URL
name). A personalization service with one offer (a CEL condition over
`lifetime_value`) is made through the admin API, twice: with read-your-write
(`wait_ms` 1000: the call publishes, waits until the worker applied its event, then
reads the profile) and without (`wait_ms` 0: publish, read, answer). `--calls` calls
go out one after another on a keep-alive connection, each an `Order Completed` for one
of `--users` users; the first `--warmup` of each are not counted. Prints per mode
p50/p90/p99/max and how many answers reflected their own event (`X-Event-Applied`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import redis

from attributes.offers import CONTENT_TYPE
from bench.api import create_key, wait_for_api
from bench.freshness import percentile, worker_command
from bench.pipeline import cleanup, drop_topics, trusted
from traitflow.config import Settings
from traitflow.services import Daemon, embedded_services, free_port
from traitflow.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def make_service(client: httpx.Client, name: str, wait_ms: int) -> str:
    """A service named `name` (table `name`); returns its token."""
    made = client.put(
        f"/v1/personalization/services/{name}",
        json={
            "account_id": "1",
            "database": "bench",
            "table": name,
            "wait_ms": wait_ms,
            "offers": [
                {
                    "name": "high_value",
                    "condition": "attributes.lifetime_value >= 100.0",
                    "attributes": {"status": "'high'"},
                }
            ],
        },
    )
    made.raise_for_status()
    token = client.post(f"/v1/personalization/services/{name}/tokens", json={"instance_id": "b"})
    token.raise_for_status()
    return str(token.json()["token"])


def run(
    client: httpx.Client, key: str, table: str, token: str, calls: int, users: list[str]
) -> tuple[list[float], Counter[str]]:
    """Milliseconds per call, and the `X-Event-Applied` values seen."""
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Authorization": f"TD1 1/{key}",
        "WP13n-Token": token,
    }
    took: list[float] = []
    applied: Counter[str] = Counter()
    for n in range(calls):
        body = {"user_id": users[n % len(users)], "event_name": "Order Completed", "revenue": 30.0}
        started = time.perf_counter()
        response = client.post(f"/bench/{table}", json=body, headers=headers)
        took.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            sys.exit(f"call {n}: {response.status_code} {response.text}")
        applied[response.headers.get("x-event-applied", "?")] += 1
    return took, applied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()

    base = Settings.from_environ(os.environ)
    for service in embedded_services(base):
        service.start()
    settings = base.isolated(
        f"td-{uuid.uuid4().hex[:8]}",
        topic_partitions=8,
        rules_path=ROOT / "examples" / "rules.yaml",
        api_rate_per_s=1e9,
        api_burst=1_000_000_000,
        source_trust=trusted(base),
    )
    asyncio.run(ensure_topics(settings))
    key = asyncio.run(create_key(settings))
    port = free_port()
    home = settings.home / "bench"
    worker, api = Daemon("td-worker", home), Daemon("td-api", home)
    env = settings.child_env()
    worker.spawn([*worker_command(), "--loglevel", "warning"], env, ROOT)
    api.spawn([sys.executable, "-m", "traitflow", "api", "--port", str(port)], env, ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_api(url)
        with httpx.Client(
            base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            for table, wait_ms in (("ryw", 1000), ("nowait", 0)):
                token = make_service(client, table, wait_ms)
                users = [f"td-{table}-{n}" for n in range(args.users)]
                run(client, key, table, token, args.warmup, users)
                took, applied = run(client, key, table, token, args.calls, users)
                print(
                    f"wait_ms={wait_ms}: {len(took)} calls, p50 {percentile(took, 0.5):.1f} ms, "
                    f"p90 {percentile(took, 0.9):.1f}, p99 {percentile(took, 0.99):.1f}, "
                    f"max {max(took):.1f}; X-Event-Applied {dict(applied)}",
                    flush=True,
                )
    finally:
        worker.stop()
        api.stop()
        cleanup(redis.Redis.from_url(settings.redis_url), settings)
        drop_topics(settings, settings.app_id)


if __name__ == "__main__":
    main()
