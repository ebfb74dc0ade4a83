"""`traitflow demo`: the whole pipeline on embedded services, end to end.

It starts the broker, Redis, a worker and the API, publishes the sample events, and
polls the API until the served profile equals what a batch run of the same rules over
the same file computes (the in-memory processor is the oracle), then prints it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from attributes.rules import load_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.services import Daemon, embedded_services
from traitflow.store import MemoryProfileStore
from traitflow.topics import publish_file, read_dead_letters


class DemoError(RuntimeError):
    pass


def demo_processes(settings: Settings) -> list[Daemon]:
    return [Daemon("worker", settings.home / "worker"), Daemon("api", settings.home / "api")]


async def expected_profile(settings: Settings, lines: list[bytes], user: str) -> tuple[Any, int]:
    """Batch-compute the profile of `user` and the dead-letter count from event lines."""
    records = [Record("file", 0, offset, line, 0) for offset, line in enumerate(lines)]
    store, dead = MemoryProfileStore(), ListDeadLetters()
    await BatchProcessor(load_rules(settings.rules_path), store, dead).process(records)
    view = await store.read_view("user", "user_id", user)
    if view is None:
        raise DemoError(f"the sample events have none for user {user!r}")
    return orjson.loads(view), len(dead.records)


def wait_for_profile(settings: Settings, user: str, expected: Any, timeout: float) -> Any:
    url = (
        f"http://{settings.api_host}:{settings.api_port}"
        f"/v1/collections/users/records/user_id/{user}"
    )
    deadline = time.monotonic() + timeout
    last: Any = None
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(url)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code == 200:
                last = response.json()
                if last["attributes"] == expected["attributes"]:
                    return last
            time.sleep(0.2)
    raise DemoError(
        f"profile {user!r} not served as expected within {timeout:.0f}s "
        f"(last seen: {last}); see the logs in {settings.home}/worker and {settings.home}/api"
    )


def run_demo(settings: Settings, events: Path, user: str, timeout: float) -> None:
    started = time.monotonic()
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    expected, dead = asyncio.run(expected_profile(settings, lines, user))
    worker, api = demo_processes(settings)
    worker.stop()
    api.stop()
    # The demo's numbers are only right on empty services: publishing the sample again
    # onto the old ones would add the same purchases a second time (new offsets).
    for service in embedded_services(settings):
        service.stop()
        service.start()
        print(f"  {service.name:<7} up on {service.host}:{service.port} (fresh)")
    if settings.kafka_is_external or settings.redis_is_external:
        print("  note: using your own Kafka/Redis; run the demo on empty ones for exact numbers")
    command = [sys.executable, "-m", "traitflow"]
    env = dict(os.environ)
    worker.spawn([*command, "worker", "--loglevel", "warning"], env, cwd=Path.cwd())
    api.spawn([*command, "api"], env, cwd=Path.cwd())
    print(f"  worker  started (log: {worker.log_file})")
    print(f"  api     started on http://{settings.api_host}:{settings.api_port}")

    sent = asyncio.run(publish_file(settings, events))
    print(f"  published {sent} events from {events}")
    profile = wait_for_profile(settings, user, expected, timeout)
    letters = asyncio.run(read_dead_letters(settings, at_least=dead, wait_s=10)) if dead else []
    reasons = [headers.get("traitflow.error.reason", b"?").decode() for _, headers in letters]

    print(f"\nServed profile of {user} (after {time.monotonic() - started:.1f}s):")
    print(orjson.dumps(profile, option=orjson.OPT_INDENT_2).decode())
    print("Computed attributes match a batch run of the same rules over the same events.")
    for reason in reasons:
        print(f"Dead-lettered (not lost): {reason}")
    print(
        f"\nNext: curl http://{settings.api_host}:{settings.api_port}"
        f"/v1/collections/users/records/user_id/{user}  -  stop everything with `make demo-down`"
    )
