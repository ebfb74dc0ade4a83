"""The outbox on a real Redis: a commit leaves its writes' messages in the partition's
stream atomically with the writes, a conflicting commit leaves none, and the relay
sends them in order and deletes them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator

import pytest
import redis

from attributes.profile import ProfileState, encode_state
from traitflow.config import Settings
from traitflow.outbox import RedisOutbox, relay
from traitflow.redis_store import RedisProfileStore
from traitflow.store import Conflict, Expected, Outgoing, ProfileWrite

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"tfoutbox-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)


def announcing(pid: str, *messages: Outgoing, version: int = 1) -> ProfileWrite:
    state = ProfileState(id=pid, version=version)
    write = ProfileWrite(state, encode_state(state), b"{}", source="events/0")
    write.outgoing = list(messages)
    return write


def test_a_commit_leaves_its_messages_and_the_relay_sends_them(
    settings: Settings, prefix: str
) -> None:
    first, tombstone = Outgoing("t", b"u-1", b"v1"), Outgoing("t", b"u-2", None)
    later = Outgoing("t", b"u-1", b"v2")

    async def run() -> tuple[int, int, list[Outgoing], int]:
        store = RedisProfileStore.from_url(settings.redis_url, prefix)
        outbox = RedisOutbox(store.client, store.keys)
        try:
            await store.commit("user", [announcing("u-1", first, tombstone)])
            with pytest.raises(Conflict):  # nothing of a refused commit is left behind
                await store.commit(
                    "user",
                    [announcing("u-1", Outgoing("t", b"u-1", b"never"), version=2)],
                    expected=Expected(versions={"u-1": None}),  # it exists: refused
                )
            await store.commit(
                "user", [announcing("u-1", later, version=2)], expected=Expected({}, {"u-1": 1})
            )
            waiting = await outbox.size(["events/0", "events/1"])
            sent: list[Outgoing] = []

            async def send(message: Outgoing) -> Awaitable[object]:
                sent.append(message)
                return asyncio.sleep(0)  # taken at once

            count = await relay(outbox, ["events/0"], send)
            return waiting, count, sent, await outbox.size(["events/0"])
        finally:
            await store.close()

    waiting, count, sent, left = asyncio.run(run())
    assert (waiting, count, left) == (3, 3, 0)
    assert sent == [first, tombstone, later]
