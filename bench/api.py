"""API read benchmark: wrk against a real `traitflow api` process reading a real Redis.

    python -m bench.api --profiles 10000 --duration 10 --connections 32

Seeds profiles through the worker's own write path (BatchProcessor + RedisProfileStore),
starts one API worker process, and runs wrk (Debian package) on loopback against:
- `/healthz`, FastAPI returning a small constant: the framework's ceiling here;
- the records endpoint by `id` (one Redis command);
- the records endpoint by `user_id` (index lookup + fetch in one Lua round trip);
each request for a random one of the seeded users. Prints requests/s and p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis

from attributes.rules import load_rules
from bench.pipeline import make_events
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.services import Daemon, embedded_services, free_port
from traitflow.store import KeyLayout, RedisProfileStore

ROOT = Path(__file__).resolve().parents[1]

LUA = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "%(path)s" .. math.random(0, %(last)d))
end
"""


async def seed(settings: Settings, users: int) -> None:
    events, _ = make_events(users * 5, users, seed=11)
    identifies = [
        orjson.dumps({"type": "identify", "userId": f"bench-user-{u}", "traits": {"seeded": True}})
        for u in range(users)
    ]
    store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
    processor = BatchProcessor(
        load_rules(ROOT / "examples" / "rules.yaml"), store, ListDeadLetters()
    )
    values = identifies + [value for _, value in events]
    records = [Record("seed", 0, i, value, 0) for i, value in enumerate(values)]
    for start in range(0, len(records), 5000):
        await processor.process(records[start : start + 5000])
    await store.close()


def wrk(
    url: str, path: str | None, users: int, duration: int, connections: int
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if path is not None:
            script.write(LUA % {"seed": 42, "path": path, "last": users - 1})
    if path is not None:
        command += ["-s", script.name]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    if "Non-2xx" in output:
        sys.exit(f"wrk saw errors:\n{output}")

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rps, output
    return {"rps": float(rps[1]), "p50": latency_ms("50%"), "p99": latency_ms("99%")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: `make setup` installs it")

    base = Settings()
    for service in embedded_services(base):
        service.start()
    settings = base.model_copy(update={"key_prefix": f"bench-api-{uuid.uuid4().hex[:8]}"})
    asyncio.run(seed(settings, args.profiles))

    port = free_port()
    daemon = Daemon("bench-api", settings.home / "bench")
    daemon.spawn(
        [sys.executable, "-m", "traitflow", "api", "--port", str(port)],
        settings.child_env(),
        ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        sample = httpx.get(f"{url}/v1/collections/users/records/user_id/bench-user-0")
        assert sample.status_code == 200, sample.text
        assert orjson.loads(sample.content)["id"] == "bench-user-0"
        rows = [
            ("GET /healthz (constant)", None),
            ("GET records by id", "/v1/collections/users/records/id/bench-user-"),
            ("GET records by user_id", "/v1/collections/users/records/user_id/bench-user-"),
        ]
        print(
            f"{args.profiles} profiles, 1 API process, "
            f"wrk -t1 -c{args.connections} {args.duration}s"
        )
        for label, path in rows:
            target = f"{url}/healthz" if path is None else url
            result = wrk(target, path, args.profiles, args.duration, args.connections)
            print(
                f"{label:<26} {result['rps']:>9,.0f} req/s   "
                f"p50 {result['p50']:.2f} ms   p99 {result['p99']:.2f} ms"
            )
    finally:
        daemon.stop()
        client = redis.Redis.from_url(settings.redis_url)
        for key in client.scan_iter(match=KeyLayout(settings.key_prefix).all_keys(), count=10_000):
            client.unlink(key)


if __name__ == "__main__":
    main()
