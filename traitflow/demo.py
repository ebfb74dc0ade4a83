"""`traitflow demo`: the whole pipeline on embedded services, end to end.

It starts the broker, Redis, a worker and the API, publishes the sample events, and
polls the API until the served profile equals what a batch run of the same rules over
the same file computes (the in-memory processor is the oracle), then prints it.

The sample's timestamps are moved so that its newest event happened a minute ago:
lookback windows are relative to the present, and the demo should show them full.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from api.keys import RedisKeyStore, new_key
from attributes.errors import TraitflowError
from attributes.identities import IdentityRules
from attributes.rules import load_rules
from attributes.stitching import SourceTrust, Trust
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.services import Daemon, embedded_services
from traitflow.topics import ensure_topics, publish_lines, read_dead_letters


class DemoError(TraitflowError):
    """The demo did not come up, or did not serve the profile it expected."""


def demo_processes(settings: Settings) -> list[Daemon]:
    return [Daemon("worker", settings.home / "worker"), Daemon("api", settings.home / "api")]


def shift_to_now(lines: list[bytes], now_ms: int) -> list[bytes]:
    """The lines with every event's `timestamp` moved by the same amount, so that the
    newest is a minute before `now_ms`; lines that are not such events are kept as-is."""
    parsed: list[tuple[bytes, Any, datetime | None]] = []
    for line in lines:
        try:
            event = orjson.loads(line)
            moment = datetime.fromisoformat(event["timestamp"])
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            parsed.append((line, None, None))
            continue
        parsed.append((line, event, moment))
    moments = [moment for _, _, moment in parsed if moment is not None]
    if not moments:
        return lines
    shift = datetime.fromtimestamp(now_ms / 1000 - 60, UTC) - max(moments)
    shifted: list[bytes] = []
    for line, event, when in parsed:
        if when is not None:
            event["timestamp"] = (when + shift).isoformat(timespec="milliseconds")
            shifted.append(orjson.dumps(event))
        else:
            shifted.append(line)
    return shifted


async def expected_profile(
    settings: Settings, lines: list[bytes], user: str, now: float
) -> tuple[Any, int]:
    """Batch-compute the profile of `user` at `now` and the dead-letter count."""
    records = [Record("file", 0, offset, line, 0) for offset, line in enumerate(lines)]
    # the file's events link as the demo topic's would
    demo_source = settings.sources[next(iter(settings.sources))]
    trust = SourceTrust(default=settings.trust.of(demo_source))
    store, dead = MemoryProfileStore(), ListDeadLetters()
    processor = BatchProcessor(
        load_rules(settings.rules_path),
        store,
        dead,
        clock=lambda: now,
        identities=IdentityRules(settings.entities["user"]),
        sources=settings.sources,
        policy=settings.default_policy,
        retractions=settings.source_deletes,
        trust=trust,
    )
    await processor.process(records)
    view = await store.read_view("user", "user_id", user)
    if view is None:
        raise DemoError(f"the sample events have none for user {user!r}")
    return orjson.loads(view), len(dead.records)


async def create_demo_key(settings: Settings) -> str:
    """A key that may read `users`: the API answers nothing without one."""
    record, token = new_key("demo", collections=["users"])
    keys = RedisKeyStore.from_url(settings, settings.key_prefix)
    try:
        await keys.create(record)
    finally:
        await keys.close()
    return token


def wait_for_profile(settings: Settings, user: str, expected: Any, timeout: float, key: str) -> Any:
    url = (
        f"http://{settings.api_host}:{settings.api_port}"
        f"/v1/collections/users/records/user_id/{user}"
    )
    deadline = time.monotonic() + timeout
    last: Any = None
    with httpx.Client(timeout=2.0, headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(url)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code in (401, 403):
                raise DemoError(f"the API refused the demo's key: {response.text}")
            if response.status_code == 200:
                last = response.json()
                if last["attributes"] == expected["attributes"]:
                    return last
            time.sleep(0.2)
    raise DemoError(
        f"profile {user!r} not served as expected within {timeout:.0f}s "
        f"(last seen: {last}); see the logs in {settings.home}/worker and {settings.home}/api"
    )


def demo_trust(settings: Settings, environ: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """The demo's settings and its processes' environment, with the source it publishes
    to trusted unless TRAITFLOW_SOURCE_TRUST says otherwise: the sample is a backend's
    and a CRM's events, whose logins link devices and emails to users (README, Trusted
    links), while a source that does not say links nothing."""
    env = dict(environ)
    if "TRAITFLOW_SOURCE_TRUST" in environ:
        return settings, env
    source = settings.sources[next(iter(settings.sources))]
    trust = {**settings.source_trust, source: Trust.TRUSTED}
    env["TRAITFLOW_SOURCE_TRUST"] = json.dumps(trust)
    return settings.model_copy(update={"source_trust": trust}), env


def run_demo(
    settings: Settings, events: Path, user: str, timeout: float, environ: Mapping[str, str]
) -> None:
    """`environ`: the environment the demo was started with, which its worker and API
    are started with (they read their settings from it, as the demo did)."""
    started = time.monotonic()
    now = time.time()
    settings, env = demo_trust(settings, environ)
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    lines = shift_to_now(lines, int(now * 1000))
    expected, dead = asyncio.run(expected_profile(settings, lines, user, now))
    worker, api = demo_processes(settings)
    worker.stop()
    api.stop()
    # The demo's numbers are only right on empty services: the sample published again
    # onto the old profiles would be taken for retries (same messageIds) or, without
    # them, add the same purchases a second time. Redis keeps its data (AOF): wipe it.
    for service in embedded_services(settings):
        service.stop()
        service.wipe()
        service.start()
        print(f"  {service.name:<7} up on {service.host}:{service.port} (fresh)")
    if settings.kafka_is_external or settings.redis_is_external:
        print("  note: using your own Kafka/Redis; run the demo on empty ones for exact numbers")
    command = [sys.executable, "-m", "traitflow"]
    # one worker process: the sample is a few events, which one process applies in
    # milliseconds, while N processes would join the group one after another (a
    # rebalance each) before the first profile is served
    worker.spawn(
        [*command, "worker", "--processes", "1", "--loglevel", "warning"], env, cwd=Path.cwd()
    )
    api.spawn([*command, "api"], env, cwd=Path.cwd())
    print(f"  worker  started (log: {worker.log_file})")
    print(f"  api     started on http://{settings.api_host}:{settings.api_port}")
    trust = env.get("TRAITFLOW_SOURCE_TRUST", "{}")
    print(f"  TRAITFLOW_SOURCE_TRUST={trust} (the sources whose events link identities)")

    key = asyncio.run(create_demo_key(settings))
    print("  api key created for the demo (collection users)")
    asyncio.run(ensure_topics(settings))
    sent = asyncio.run(publish_lines(settings, next(iter(settings.sources)), lines))
    print(f"  published {sent} events from {events} (moved to end a minute ago)")
    profile = wait_for_profile(settings, user, expected, timeout, key)
    letters = asyncio.run(read_dead_letters(settings, at_least=dead, wait_s=10)) if dead else []
    reasons = [headers.get("traitflow.error.reason", b"?").decode() for _, headers in letters]

    print(f"\nServed profile of {user} (after {time.monotonic() - started:.1f}s):")
    print(orjson.dumps(profile, option=orjson.OPT_INDENT_2).decode())
    print("Computed attributes match a batch run of the same rules over the same events.")
    for reason in reasons:
        print(f"Dead-lettered (not lost): {reason}")
    print(
        f"\nNext: curl -H 'Authorization: Bearer {key}' "
        f"http://{settings.api_host}:{settings.api_port}/v1/collections/users/records/user_id/{user}"
        "\n(the demo's API key; `traitflow keys create` makes more)"
        "  -  stop everything with `make demo-down`"
    )
