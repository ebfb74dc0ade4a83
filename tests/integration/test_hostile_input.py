"""The issue's run, through the real worker: hostile events mixed into a valid stream,
then a producer's retry of what was already applied. Nothing stalls, every profile
equals the batch answer, every hostile event is a dead letter with its reason, and the
retry changes nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import Publisher, wait_until
from tests.integration.oracle import expected_view
from traitflow.config import Settings
from traitflow.services import Daemon
from traitflow.topics import read_dead_letters

pytestmark = pytest.mark.integration

USERS = 30
EVENTS = 1_500


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def hostile_events(tag: str, user: str) -> dict[bytes, str]:
    """Raw hostile events (each carrying `tag`, so this run finds its own) -> words of
    the reason each must be dead-lettered with."""
    track = f'{{"type":"track","event":"Order Completed","userId":"{user}","messageId":"{tag}'
    deep = f'{track}-deep","properties":{{"a":'.encode() + b"[" * 1_500 + b"]" * 1_500 + b"}}"
    return {
        deep: "deeper than the decoder follows",
        f'{track}-big","properties":{{"p":"{"x" * 300_000}"}}}}'.encode(): "262144",
        orjson.dumps(
            {"type": "page", "userId": "u" * 600, "messageId": f"{tag}-long"}
        ): "identity user_id is 600 characters",
        orjson.dumps(
            {
                "type": "page",
                "userId": user,
                "messageId": f"{tag}-future",
                "timestamp": "2999-01-01T00:00:00Z",
            }
        ): "in the future",
        f"not json {tag}".encode(): "not a valid event",
        orjson.dumps(
            {"type": "page", "userId": user, "messageId": f"{tag}-{'m' * 600}"}
        ): "messageId is",
        f'{track}-nested","properties":{{"a":'.encode()
        + b"[" * 40
        + b"]" * 40
        + b"}}": "42 levels",
    }


def test_hostile_events_stop_nothing_and_a_retry_counts_once(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    run = uuid.uuid4().hex[:8]
    users = [f"hostile-{run}-{n}" for n in range(USERS)]
    now = time.time()
    by_user: dict[str, list[dict[str, Any]]] = {user: [] for user in users}
    valid: list[dict[str, Any]] = []
    for n in range(EVENTS):
        user = users[n % USERS]
        event = {
            "type": "track",
            "event": "Order Completed" if n % 3 else "Product Viewed",
            "userId": user,
            "messageId": f"{run}-{n}",
            "timestamp": stamp(now - 3_600 + n),
            "properties": {"revenue": n % 17 + 0.5, "product_id": f"sku-{n % 7}", "category": "c"},
        }
        by_user[user].append(event)
        valid.append(event)
    hostile = hostile_events(run, users[0])
    stream: list[dict[str, Any] | bytes] = list(valid)
    for k, raw in enumerate(hostile):  # spread through the stream
        stream.insert((k + 1) * len(stream) // (len(hostile) + 1), raw)
    publish(stream)

    def served(user: str) -> Any:
        response = api.get(f"/v1/collections/users/records/user_id/{user}")
        return response.json() if response.status_code == 200 else None

    def all_applied() -> bool:
        return all(
            (view := served(user)) is not None and view["version"] == len(by_user[user])
            for user in users
        )

    wait_until(all_applied, timeout=60, what="every valid event applied")
    views = {user: served(user) for user in users}
    for user in users:
        assert views[user] == expected_view(settings, by_user[user], user), user

    def ours() -> dict[bytes, dict[str, bytes]] | None:
        found = dict(asyncio.run(read_dead_letters(settings, wait_s=0.9)))
        return found if hostile.keys() <= found.keys() else None

    letters = wait_until(ours, what="every hostile event in the dead-letter topic")
    for raw, words in hostile.items():
        assert words in letters[raw]["traitflow.error.reason"].decode()
    assert not {orjson.dumps(event) for event in valid} & letters.keys()

    # a producer retries the first 500 (same messageIds, new offsets), then every user
    # gets one new event: once each user's view is the oracle's over its events and
    # the new one, the retries before it in the partition were read and changed nothing
    finals = [
        {**by_user[user][-1], "messageId": f"{run}-final-{user}", "timestamp": stamp(now)}
        for user in users
    ]
    publish([*valid[:500], *finals])
    for final in finals:
        by_user[final["userId"]].append(final)
    expected = {user: expected_view(settings, by_user[user], user) for user in users}
    wait_until(
        lambda: all(served(user) == expected[user] for user in users),
        what="every user's view to be the oracle's after the retries",
    )
