"""CPU per Redis round trip: redis-py's asyncio client against `traitflow.resp`.

    python -m bench.redis_clients [--calls 5000]

Sequential GETs of a 700-byte value (a profile view's size) from the embedded Redis,
on uvloop as under `traitflow api`: CPU time of this process per call, which is what a
read costs the API besides its own work. Also 32 concurrent GETs at a time, where
`traitflow.resp` writes each loop turn's commands at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import uvloop

from traitflow.config import Settings
from traitflow.resp import RespClient
from traitflow.services import embedded_services


async def per_call(get: Callable[[], Awaitable[Any]], calls: int, concurrent: int) -> float:
    """µs of CPU per call, best of three."""
    for _ in range(500):
        await get()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(calls // concurrent):
            await asyncio.gather(*(get() for _ in range(concurrent)))
        best = min(best, time.process_time() - started)
    return 1e6 * best / (calls // concurrent * concurrent)


async def run(url: str, calls: int) -> None:
    key = f"bench-clients-{uuid.uuid4().hex[:8]}"
    redis_py = aioredis.Redis.from_url(url)
    resp = RespClient.from_url(url)
    await redis_py.set(key, b"x" * 700)
    try:
        for concurrent in (1, 32):
            ours = await per_call(lambda: resp.call("GET", key), calls, concurrent)
            theirs = await per_call(lambda: redis_py.get(key), calls, concurrent)
            print(
                f"{concurrent:>2} at a time: redis-py {theirs:6.1f} µs/GET   "
                f"traitflow.resp {ours:6.1f} µs/GET"
            )
    finally:
        await redis_py.delete(key)
        await redis_py.aclose()
        await resp.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    settings = Settings.from_environ(os.environ)
    for service in embedded_services(settings):
        service.start()
    uvloop.run(run(settings.redis_url, args.calls))


if __name__ == "__main__":
    main()
