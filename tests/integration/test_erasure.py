"""Erasure by identity with a real worker, broker, Redis and API: a person erased through
the CLI (by email) and another through `DELETE /access/entities` leave nothing but
tombstones; then the whole topic is read again by a worker of a new consumer group (a
replay from the earliest offset) and neither comes back, while every other profile
comes out byte for byte as before and equal to the batch oracle. A later event of an
erased identity starts a new profile of that event alone."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from attributes.events import iso_from_ms
from tests.integration.conftest import create_key, wait_until
from tests.integration.oracle import expected_view
from tests.integration.workers import (
    ROOT,
    alive,
    running_api,
    skipped_records,
    start_worker,
    worker_with_rules,
)
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = (ROOT / "examples" / "rules.yaml").read_text()
CLI = [sys.executable, "-m", "traitflow"]


def at(minutes_ago: int) -> str:
    """An event time (the oracle's records have no broker time to fall back on)."""
    return iso_from_ms(int(time.time() * 1000) - minutes_ago * 60_000)


def events_of(user: str, email: str, n: int) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = [
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": email, "plan": "pro"},
            "timestamp": at(n + 1),
        }
    ]
    for i in range(n):
        made.append(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": user,
                "messageId": f"{user}-{i}",
                "properties": {"revenue": 10 + i, "product_id": f"p{i}"},
                "timestamp": at(n - i),
            }
        )
    return made


def keys_and_values(client: redis.Redis, prefix: str) -> str:
    """Every key under `prefix` and every string value, as one text to search."""
    parts = []
    for key in client.scan_iter(f"{prefix}:*", count=1000):
        parts.append(key.decode(errors="replace") if isinstance(key, bytes) else str(key))
        if client.type(key) == b"string":
            value = client.get(key) or b""
            parts.append(value.decode(errors="replace") if isinstance(value, bytes) else value)
    return "\n".join(parts)


def test_erased_people_stay_erased_when_the_topic_is_replayed(
    settings: Settings, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    erased_by_cli, erased_by_api = f"ex-{run}-cli", f"ex-{run}-api"
    kept = [f"ex-{run}-k{i}" for i in range(6)]
    people = [erased_by_cli, erased_by_api, *kept]
    emails = {user: f"{user}@Example.com" for user in people}
    by_user = {user: events_of(user, emails[user], 3) for user in people}
    with worker_with_rules(settings, tmp_path, RULES, f"tferase-{run}") as own:
        client = redis.Redis.from_url(own.settings.redis_url)
        keys = own.keys
        own.publish([event for user in people for event in by_user[user]])
        wait_until(
            lambda: all(
                client.get(keys.view("user", user)) is not None
                and orjson.loads(client.get(keys.view("user", user)) or b"{}")["attributes"][
                    "purchase_count"
                ]
                == 3
                for user in people
            ),
            timeout=60,
            what="every profile to be written",
        )

        # 1. erase one person through the CLI, by email (any case: normalised)
        done = subprocess.run(
            [*CLI, "profiles", "delete", emails[erased_by_cli], "--type", "email", "--wait", "30"],
            env=own.settings.child_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        request, status = done.stdout.strip().splitlines()
        assert orjson.loads(status)["status"] == "applied"
        assert orjson.loads(status)["found"] is True

        # 2. and one through the API, by user id
        token = create_key(own.settings, f"erase-admin-{run}", admin=True)
        with running_api(own.settings, "api") as url:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as api:
                params = {"schema.name": "_xdm.context.profile", "entityId": erased_by_api}
                asked = api.delete("/access/entities", params=params)
                assert asked.status_code == 202, asked.text
                status_url = asked.json()["statusUrl"]
                wait_until(
                    lambda: api.get(status_url).json()["status"] == "applied",
                    what="the API's erase request to be applied",
                )
                assert api.get("/access/entities", params=params).status_code == 404
                asked_cli = api.get(f"/access/erasures/{request}")
                assert asked_cli.json()["status"] == "applied"

        def nothing_personal_of(user: str) -> bool:
            text = keys_and_values(client, own.settings.key_prefix)
            return user not in text and emails[user].lower() not in text

        for user in (erased_by_cli, erased_by_api):
            assert nothing_personal_of(user), user
        tombstones = list(client.scan_iter(f"{own.settings.key_prefix}:t:user:*"))
        assert len(tombstones) == 4  # user id and email of each
        sizes = client.hgetall(keys.audience_sizes("user"))
        before = {user: client.get(keys.view("user", user)) for user in kept}
        for user in kept:
            assert orjson.loads(before[user] or b"null") == expected_view(
                own.settings, by_user[user], user
            )

        # 3. the whole topic again, from the earliest offset, by a new consumer group
        own.worker.stop()
        replaying = Settings.model_validate(
            own.settings.model_dump() | {"app_id": f"{own.settings.app_id}-replay"}
        )
        published = 1 + sum(len(events) for events in by_user.values()) + 2  # probe, erases
        own.worker = start_worker(replaying, "replay")
        wait_until(
            lambda: alive(own.worker) and skipped_records(own.worker) >= published,
            timeout=90,
            what="the replay to reach the end of the topic",
        )
        for user in (erased_by_cli, erased_by_api):
            assert nothing_personal_of(user), user
            assert client.get(keys.view("user", user)) is None
        for user in kept:
            assert client.get(keys.view("user", user)) == before[user], user
        assert client.hgetall(keys.audience_sizes("user")) == sizes

        # 4. a later event of an erased identity starts a new person of its own
        fresh: dict[str, Any] = {"type": "track", "event": "Order Completed"}
        fresh["userId"] = erased_by_cli
        fresh |= {"messageId": f"{erased_by_cli}-new", "properties": {"revenue": 99}}
        fresh["timestamp"] = at(0)
        own.publish([fresh])
        wait_until(
            lambda: client.get(keys.view("user", erased_by_cli)) is not None,
            what="the new profile",
        )
        view = orjson.loads(client.get(keys.view("user", erased_by_cli)) or b"null")
        assert view == expected_view(own.settings, [fresh], erased_by_cli)
        client.close()
