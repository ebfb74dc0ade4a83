"""API read benchmark: wrk against a real `traitflow api` process reading a real Redis.

    python -m bench.api --profiles 10000 --duration 10 --connections 32

Seeds profiles through the worker's own write path (BatchProcessor + RedisProfileStore),
creates an admin API key (rate limit out of reach) in the API's key store, starts one
API worker process, and runs wrk (Debian package) on loopback against:
- `/healthz`, FastAPI returning a small constant: the framework's ceiling here (no key,
  no Redis; through the same middleware as every route);
- the records endpoint by `id` (one Redis command) and by `user_id` (index lookup +
  fetch in one Lua round trip), plus the key's rate-limit round trip;
- `POST /v2/activation` by `user_id` (a wrk Lua script builds each body);
each request for a random one of the seeded users. Per endpoint: requests/s at
saturation (`--connections` connections, no pacing), then p50/p99 at about half that
rate. wrk2 (constant rate) is not packaged; half load is approximated with a Lua
`delay()` per request: N connections each wait `--pace-ms` between a response and
their next request, N chosen so that N / (pace + latency) is half the saturated rate
(one correction run when the first lands outside 40-60%). Latencies at half load are
wrk's, from send to response, without coordinated-omission correction.

`--pin` puts the API process on a core of its own (the last), and wrk, Redis and this
script on the others: the constant endpoint and the reads then compete for nothing
but the API's core (without it, the reads also wait for Redis on the core wrk uses).

Also measures the in-process cost of the API's middleware (metrics + body limit) per
request: `/healthz` called as ASGI with and without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from fastapi import FastAPI
from starlette.types import Message

from api.app import create_app
from api.keys import RedisKeyStore, new_key
from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from bench.pipeline import make_events
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.memory_store import MemoryProfileStore
from traitflow.redis_store import RedisProfileStore
from traitflow.services import Daemon, embedded_services, free_port

ROOT = Path(__file__).resolve().parents[1]

LUA_GET = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "%(path)s" .. math.random(0, %(last)d))
end
"""

LUA_POST = """
math.randomseed(%(seed)d)
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "%(authorization)s"}
request = function()
  local body = '{"entity":"user","destinationId":"%(destination)s",' ..
    '"id":{"type":"user_id","value":"bench-user-' .. math.random(0, %(last)d) .. '"}}'
  return wrk.format("POST", "%(path)s", headers, body)
end
"""

LUA_PACE = """
delay = function()
  return %(pace)d
end
"""


@dataclass(frozen=True)
class Target:
    label: str
    path: str
    #: a wrk Lua script (`%`-formatted), None for a plain GET of `path`
    lua: str | None = None


async def seed(settings: Settings, users: int) -> None:
    events, _ = make_events(users * 5, users, seed=11)
    identifies = [
        orjson.dumps({"type": "identify", "userId": f"bench-user-{u}", "traits": {"seeded": True}})
        for u in range(users)
    ]
    store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
    processor = BatchProcessor(
        load_rules(ROOT / "examples" / "rules.yaml"),
        store,
        ListDeadLetters(),
        trust=TRUST_ALL,  # its logins link devices to users (README, "Trusted links")
    )
    values = identifies + [value for _, value in events]
    records = [Record("seed", 0, i, value, 0) for i, value in enumerate(values)]
    for start in range(0, len(records), 5000):
        await processor.process(records[start : start + 5000])
    await store.close()


def wrk(
    url: str,
    target: Target,
    values: dict[str, Any],
    duration: int,
    connections: int,
    pace_ms: int | None = None,
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    command += ["-H", f"Authorization: {values['authorization']}"]
    script_text = (target.lua % values if target.lua else "") + (
        LUA_PACE % {"pace": pace_ms} if pace_ms is not None else ""
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(script_text)
    if script_text:
        command += ["-s", script.name]
    path = target.path if target.lua is None else ""
    output = subprocess.run(
        [*command, url + path], capture_output=True, text=True, check=True
    ).stdout
    Path(script.name).unlink()
    if "Non-2xx" in output or "Socket errors" in output:
        sys.exit(f"wrk saw errors:\n{output}")

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rps, output
    return {"rps": float(rps[1]), "p50": latency_ms("50%"), "p99": latency_ms("99%")}


def half_load(
    url: str, target: Target, values: dict[str, Any], duration: int, saturated: float, pace: int
) -> tuple[dict[str, float], int]:
    """wrk at ~50% of `saturated` req/s: paced connections (see the module docstring)."""
    goal = saturated / 2
    connections = max(1, round(goal * (pace + 1) / 1000))
    result = wrk(url, target, values, duration, connections, pace)
    if not 0.4 <= result["rps"] / saturated <= 0.6:
        connections = max(1, round(connections * goal / max(result["rps"], 1.0)))
        result = wrk(url, target, values, duration, connections, pace)
    return result, connections


def wait_for_api(url: str, timeout_s: float = 20.0) -> None:
    """Until the API at `url` answers `/healthz` (or `timeout_s` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)


async def create_key(settings: Settings, name: str = "bench", **limits: Any) -> str:
    """An admin key's token; unlimited unless `limits` (`rate_per_s`, `burst`) say."""
    limits = {"rate_per_s": 1e9, "burst": 1_000_000_000} | limits
    keys = RedisKeyStore.from_url(settings.redis_url, settings.key_prefix)
    record, token = new_key(name, admin=True, **limits)
    await keys.create(record)
    await keys.close()
    return token


async def middleware_cost(requests: int = 20_000) -> tuple[float, float]:
    """µs per in-process `/healthz` call, with the app's middleware and without."""

    async def per_call(app: FastAPI) -> float:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/healthz",
            "raw_path": b"/healthz",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        for _ in range(2000):  # warm up
            await app(dict(scope), receive, send)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            best = min(best, time.perf_counter() - start)
        return best / requests * 1e6

    with_middleware = create_app(Settings(), store=MemoryProfileStore())
    without = create_app(Settings(), store=MemoryProfileStore())
    without.user_middleware.clear()  # the stack is built on the first call
    return await per_call(with_middleware), await per_call(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pace-ms", type=int, default=20, help="per-connection wait at half load")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="API process on the last core; wrk, Redis and this script on the others",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: `make setup` installs it")

    with_mw, without_mw = asyncio.run(middleware_cost())
    print(
        f"in-process GET /healthz: {with_mw:.1f} µs with the middleware, "
        f"{without_mw:.1f} µs without ({with_mw - without_mw:+.1f} µs per request)"
    )

    base = Settings.from_environ(os.environ)
    services = embedded_services(base)
    for service in services:
        service.start()
    cores = sorted(os.sched_getaffinity(0))
    api_cores, other_cores = ({cores[-1]}, set(cores[:-1])) if args.pin else (set(), set())
    settings = base.model_copy(update={"key_prefix": f"bench-api-{uuid.uuid4().hex[:8]}"})
    asyncio.run(seed(settings, args.profiles))
    token = asyncio.run(create_key(settings))
    destination = next(iter(settings.destinations))

    port = free_port()
    daemon = Daemon("bench-api", settings.home / "bench")
    if api_cores:  # children inherit this process's affinity: the API, then wrk
        os.sched_setaffinity(0, api_cores)
    daemon.spawn(
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
    values: dict[str, Any] = {
        "seed": 42,
        "last": args.profiles - 1,
        "authorization": f"Bearer {token}",
        "destination": destination,
    }
    headers = {"Authorization": values["authorization"]}
    try:
        wait_for_api(url)
        sample = httpx.get(
            f"{url}/v1/collections/users/records/user_id/bench-user-0", headers=headers
        )
        assert sample.status_code == 200, sample.text
        assert orjson.loads(sample.content)["id"] == "bench-user-0"
        activation = httpx.post(
            f"{url}/v2/activation",
            headers=headers,
            json={
                "entity": "user",
                "destinationId": destination,
                "id": {"type": "user_id", "value": "bench-user-0"},
            },
        )
        assert activation.status_code == 200, activation.text
        assert orjson.loads(activation.content)["data"], activation.text
        targets = [
            Target("GET /healthz (constant)", "/healthz"),
            Target(
                "GET records by id",
                "",
                LUA_GET.replace("%(path)s", "/v1/collections/users/records/id/bench-user-"),
            ),
            Target(
                "GET records by user_id",
                "",
                LUA_GET.replace("%(path)s", "/v1/collections/users/records/user_id/bench-user-"),
            ),
            Target(
                "POST /v2/activation",
                "",
                LUA_POST.replace("%(path)s", "/v2/activation"),
            ),
        ]
        print(
            f"{args.profiles} profiles, 1 API process{' on its own core' * args.pin}, "
            f"wrk -t1 -c{args.connections} "
            f"{args.duration}s; half load: paced connections, {args.pace_ms} ms apart"
        )
        ceiling = None
        for target in targets:
            full = wrk(url, target, values, args.duration, args.connections)
            ceiling = ceiling or full["rps"]
            half, connections = half_load(
                url, target, values, args.duration, full["rps"], args.pace_ms
            )
            print(
                f"{target.label:<26} {full['rps']:>7,.0f} req/s ({full['rps'] / ceiling:4.0%})  "
                f"p50 {full['p50']:6.2f} ms  p99 {full['p99']:6.2f} ms  |  "
                f"at {half['rps']:,.0f} req/s ({half['rps'] / full['rps']:.0%}, "
                f"-c{connections}): p50 {half['p50']:.2f} ms  p99 {half['p99']:.2f} ms"
            )
    finally:
        daemon.stop()
        if other_cores:  # the embedded services outlive this run
            for service in services:
                if (pid := service.pid()) is not None:
                    os.sched_setaffinity(pid, set(cores))
        client = redis.Redis.from_url(settings.redis_url)
        for key in client.scan_iter(match=KeyLayout(settings.key_prefix).all_keys(), count=10_000):
            client.unlink(key)


if __name__ == "__main__":
    main()
