"""RedisProfileStore against a real Redis: the writes a batch makes, and the expiry index."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis

from attributes.profile import ProfileState, encode_state
from traitflow.commit_script import MAX_ITEMS
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.store import Conflict, Expected, ProfileWrite

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"tfstore-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)


def with_store(
    settings: Settings, prefix: str, use: Callable[[RedisProfileStore], Awaitable[T]]
) -> T:
    async def go() -> T:
        store = RedisProfileStore.from_url(settings.redis_url, prefix)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def write(
    pid: str, expiry: tuple[str, int | None] | None = None, **identities: str
) -> ProfileWrite:
    state = ProfileState(id=pid, version=1)
    view = f'{{"id": "{pid}"}}'.encode()
    return ProfileWrite(state, encode_state(state), view, list(identities.items()), expiry)


def test_a_batch_write_and_its_reads(settings: Settings, prefix: str) -> None:
    async def use(store: RedisProfileStore) -> Any:
        await store.save("user", [write("u-1", anonymous_id="a-1"), write("u-2")])
        loaded = await store.load("user", ["u-1", "u-2", "u-3"])
        return (
            sorted(loaded),
            await store.read_view("user", "id", "u-1"),
            await store.read_view("user", "anonymous_id", "a-1"),
            await store.read_view("user", "anonymous_id", "a-2"),
        )

    assert with_store(settings, prefix, use) == (
        ["u-1", "u-2"],
        b'{"id": "u-1"}',
        b'{"id": "u-1"}',
        None,
    )


def test_the_expiry_index_is_written_with_the_states(
    settings: Settings, prefix: str, redis_client: redis.Redis
) -> None:
    async def use(store: RedisProfileStore) -> Any:
        await store.save(
            "user",
            [
                write("u-1", ("events/0", 3_000)),
                write("u-2", ("events/0", 1_000)),
                write("u-3", ("events/0", 2_000)),
                write("u-4", ("events/1", 500)),
                write("u-5"),  # rules without windows: not indexed
            ],
        )
        first = await store.due("user", "events/0", now=2_500, limit=10)
        limited = await store.due("user", "events/0", now=2_500, limit=1)
        # a later write moves an entry; None takes it out
        await store.save(
            "user", [write("u-2", ("events/0", 9_000)), write("u-3", ("events/0", None))]
        )
        second = await store.due("user", "events/0", now=5_000, limit=10)
        await store.unschedule("user", "events/0", ["u-1"])
        third = await store.due("user", "events/0", now=10_000, limit=10)
        return first, limited, second, third

    first, limited, second, third = with_store(settings, prefix, use)
    assert first == ["u-2", "u-3"]  # earliest first, only the due ones
    assert limited == ["u-2"]
    assert second == ["u-1"]
    assert third == ["u-2"]
    assert redis_client.zrange(KeyLayout(prefix).expiries("user", "events/1"), 0, -1) == [b"u-4"]
    assert redis_client.exists(KeyLayout(prefix).state("user", "u-5"))


def test_a_commit_checks_pointers_and_versions(settings: Settings, prefix: str) -> None:
    """Nothing is written when anything the batch read has changed since, and the
    conflict names every check that failed (the caller redoes just what read them)."""

    async def use(store: RedisProfileStore) -> Any:
        await store.save("user", [write("u-1", anonymous_id="a-1")])
        stale = Expected({("anonymous_id", "a-1"): None}, {"u-1": 1})
        moved = Expected({("anonymous_id", "a-1"): "u-1"}, {"u-1": 0})
        both = Expected({("anonymous_id", "a-1"): None, ("email", "e"): None}, {"u-1": 0})
        outcomes: list[object] = []
        for expected in (stale, moved, both):
            try:
                await store.commit("user", [write("u-9")], expected=expected)
                outcomes.append("written")
            except Conflict as conflict:
                outcomes.append((conflict.pointers, conflict.profiles))
        fine = Expected({("anonymous_id", "a-1"): "u-1"}, {"u-1": 1, "u-2": None})
        await store.commit("user", [write("u-2")], removed=["u-1"], expected=fine)
        return outcomes, sorted(await store.load("user", ["u-1", "u-2", "u-9"]))

    outcomes, left = with_store(settings, prefix, use)
    assert outcomes == [
        ({("anonymous_id", "a-1")}, set()),
        (set(), {"u-1"}),
        ({("anonymous_id", "a-1")}, {"u-1"}),
    ]
    assert left == ["u-2"]  # u-9 never written; u-1 removed with the last commit


def test_a_key_rewritten_with_the_value_read_is_no_conflict(
    settings: Settings, prefix: str, redis_client: redis.Redis
) -> None:
    """The commit checks values, not writes: another worker linking an identity again
    to the same profile changes nothing the batch read, so the commit is written."""
    keys = KeyLayout(prefix)
    pointer = keys.index("user", "anonymous_id", "a-1")

    async def use(store: RedisProfileStore) -> Any:
        await store.save("user", [write("u-1", anonymous_id="a-1")])
        redis_client.set(pointer, b"u-1")  # on another connection, after the read
        await store.commit(
            "user", [write("u-2")], expected=Expected({("anonymous_id", "a-1"): "u-1"})
        )

    with_store(settings, prefix, use)
    assert redis_client.get(keys.view("user", "u-2")) == b'{"id": "u-2"}'


def test_a_commit_larger_than_one_command_is_checked_and_written_whole(
    settings: Settings, prefix: str, redis_client: redis.Redis
) -> None:
    """Past `MAX_ITEMS` the script's checks and writes are split into several commands:
    one stale check among thousands still refuses the whole commit, and a commit that
    holds writes every key."""
    count = 3 * MAX_ITEMS + 7
    keys = KeyLayout(prefix)
    pids = [f"u-{n}" for n in range(count)]

    async def use(store: RedisProfileStore) -> Any:
        await store.save("user", [write(pid) for pid in pids])
        redis_client.set(keys.version("user", pids[-1]), b"2")  # another worker wrote it
        stale = Expected(versions=dict.fromkeys(pids, 1))
        with pytest.raises(Conflict) as refused:
            await store.commit(
                "user", [write(pid, anonymous_id=pid) for pid in pids], expected=stale
            )
        assert refused.value.profiles == {pids[-1]}
        redis_client.set(keys.version("user", pids[-1]), b"1")
        await store.commit("user", [write(pid, anonymous_id=pid) for pid in pids], expected=stale)

    with_store(settings, prefix, use)
    pointers = redis_client.mget([keys.index("user", "anonymous_id", pid) for pid in pids])
    assert pointers == [pid.encode() for pid in pids]


def test_a_state_stored_without_a_version_key_gets_one(
    settings: Settings, prefix: str, redis_client: redis.Redis
) -> None:
    """States written before version keys existed must not make every commit conflict."""
    keys = KeyLayout(prefix)
    legacy = ProfileState(id="u-1", version=7)
    redis_client.set(keys.state("user", "u-1"), encode_state(legacy))

    async def use(store: RedisProfileStore) -> Any:
        loaded = (await store.load("user", ["u-1"]))["u-1"]
        loaded.version += 1
        write = ProfileWrite(loaded, encode_state(loaded), b"{}")
        await store.commit("user", [write], expected=Expected(versions={"u-1": 7}))

    with_store(settings, prefix, use)
    assert redis_client.get(keys.version("user", "u-1")) == b"8"


def test_applied_message_ids_are_committed_with_the_states(settings: Settings, prefix: str) -> None:
    async def use(store: RedisProfileStore) -> Any:
        first = write("u-1")
        first.messages = [("web", "m-1"), ("web", "m-2"), ("crm", "m-9")]
        before = await store.applied("user", [("web", "m-1")])
        await store.commit("user", [first])
        found = await store.applied(
            "user", [("web", "m-1"), ("crm", "m-1"), ("web", "m-3"), ("crm", "m-9")]
        )
        return before, found

    before, found = with_store(settings, prefix, use)
    assert before == set()
    assert found == {("web", "m-1"), ("crm", "m-9")}


def test_message_ids_are_remembered_for_the_window_and_expire_by_bucket(
    settings: Settings, prefix: str, redis_client: redis.Redis
) -> None:
    """A window of 7 s in buckets of 1 s: an id applied at t is found until t + 7 s at
    least and t + 8 s at most; its bucket's set expires then, on its own."""
    base = int(time.time() * 1000) // 1000 * 1000 + 500  # half-way into a bucket
    now = [base]
    keys = KeyLayout(prefix)

    async def go() -> list[set[Any]]:
        store = RedisProfileStore.from_url(
            settings.redis_url, prefix, dedupe_window_ms=7_000, clock=lambda: now[0]
        )
        try:
            applied = write("u-1")
            applied.messages = [("web", "m-1")]
            await store.commit("user", [applied])
            found = []
            for at in (base, base + 7_000, base + 7_499, base + 7_500, base + 8_000):
                now[0] = at
                found.append(await store.applied("user", [("web", "m-1")]))
            return found
        finally:
            await store.close()

    started = int(time.time() * 1000)
    found = asyncio.run(go())
    assert found == [{("web", "m-1")}] * 3 + [set(), set()]
    bucket = base // 1000
    ttl = redis_client.pttl(keys.messages("user", "web", bucket))
    expires_at = (bucket + 1) * 1000 + 7_000
    assert expires_at - int(time.time() * 1000) - 200 < ttl <= expires_at - started
