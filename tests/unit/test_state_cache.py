"""The worker's state cache and the rule of who may change its states (`Checkout`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from attributes.profile import ProfileState, encode_state
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore, Checkout
from traitflow.store import Conflict, Expected, ProfileWrite

pytestmark = pytest.mark.anyio


def write(pid: str, view: bytes, *identities: tuple[str, str], version: int = 1) -> ProfileWrite:
    state = ProfileState(id=pid, version=version, identities={"user_id": [pid]})
    return ProfileWrite(state, encode_state(state), view, list(identities))


# --- CachedProfileStore ---------------------------------------------------------------------


class CountingStore(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.fail_saves = False

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        self.loaded.extend(ids)
        return await super().load(entity, ids)

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        if self.fail_saves:
            raise ConnectionError("redis is down")
        await super().commit(entity, writes, removed=removed, expected=expected)


@pytest.fixture
def inner() -> CountingStore:
    return CountingStore()


async def test_cache_serves_what_it_wrote_without_a_load(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=10)
    saved = write("u-1", b"view-1", ("user_id", "u-1"))
    await cache.save("user", [saved])
    assert (await cache.load("user", ["u-1"]))["u-1"] is saved.state
    assert inner.loaded == []
    assert await cache.read_view("user", "user_id", "u-1") == b"view-1"  # written through


async def test_cache_loads_what_it_does_not_hold(inner: CountingStore) -> None:
    await inner.save("user", [write("u-2", b"view-2")])
    cache = CachedProfileStore(inner, max_profiles=10)
    await cache.save("user", [write("u-1", b"view-1")])
    loaded = await cache.load("user", ["u-1", "u-2", "u-3"])
    assert sorted(loaded) == ["u-1", "u-2"]
    assert inner.loaded == ["u-2", "u-3"]


async def test_cache_drops_states_whose_write_failed(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=10)
    await cache.save("user", [write("u-1", b"v1")])
    inner.fail_saves = True
    with pytest.raises(ConnectionError):
        await cache.save("user", [write("u-1", b"v2", version=2)])
    assert len(cache) == 0
    assert (await cache.load("user", ["u-1"]))["u-1"].version == 1  # the stored one


async def test_cache_evicts_the_least_recently_used(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=2)
    await cache.save("user", [write("u-1", b""), write("u-2", b"")])
    await cache.load("user", ["u-1"])  # u-1 is now the most recently used
    await cache.save("user", [write("u-3", b"")])
    assert len(cache) == 2
    await cache.load("user", ["u-1", "u-2", "u-3"])
    assert inner.loaded == ["u-2"]


async def test_cache_of_size_zero_holds_nothing(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=0)
    await cache.save("user", [write("u-1", b"")])
    assert len(cache) == 0
    assert list(await cache.load("user", ["u-1"])) == ["u-1"]
    assert inner.loaded == ["u-1"]


async def test_cache_clear_and_abandon(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=10)
    await cache.save("user", [write("u-1", b""), write("u-2", b"")])
    cache.abandon("user", ["u-1", "u-9"])
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    await cache.load("user", ["u-1", "u-2"])
    assert inner.loaded == ["u-1", "u-2"]


async def test_cache_keys_include_the_entity(inner: CountingStore) -> None:
    cache = CachedProfileStore(inner, max_profiles=10)
    await cache.save("user", [write("x-1", b"")])
    assert await cache.load("account", ["x-1"]) == {}
    assert inner.loaded == ["x-1"]


async def test_cache_close_closes_the_inner_store() -> None:
    class Closing(MemoryProfileStore):
        closed = False

        async def close(self) -> None:
            self.closed = True

    inner = Closing()
    await CachedProfileStore(inner, max_profiles=1).close()
    assert inner.closed


# --- Checkout -------------------------------------------------------------------------------


async def cached(inner: CountingStore, *pids: str) -> CachedProfileStore:
    cache = CachedProfileStore(inner, max_profiles=10)
    await cache.save("user", [write(pid, b"v1") for pid in pids])
    return cache


async def test_a_checkout_forgets_the_states_it_changed_and_did_not_commit(
    inner: CountingStore,
) -> None:
    cache = await cached(inner, "u-1", "u-2")
    forgotten: list[str] = []
    async with Checkout(cache, "user", forget=forgotten.extend) as work:
        states = await work.load(["u-1", "u-2"])
        for state in states.values():
            state.version += 1  # changed in place, as the processor does
        await work.commit([write("u-1", b"v2", version=2)])
    assert forgotten == ["u-2"]
    assert inner.loaded == []  # both came from the cache
    loaded = await cache.load("user", ["u-1", "u-2"])
    assert (loaded["u-1"].version, loaded["u-2"].version) == (2, 1)  # u-2: the stored one
    assert inner.loaded == ["u-2"]


async def test_a_checkout_that_raises_forgets_everything_it_loaded(inner: CountingStore) -> None:
    cache = await cached(inner, "u-1")

    async def compute() -> None:
        async with Checkout(cache, "user") as work:
            (await work.load(["u-1"]))["u-1"].version = 99
            raise RuntimeError("a bug while computing")

    with pytest.raises(RuntimeError):
        await compute()
    assert (await cache.load("user", ["u-1"]))["u-1"].version == 1
    assert inner.loaded == ["u-1"]


async def test_a_conflicting_commit_leaves_its_states_to_be_forgotten(
    inner: CountingStore,
) -> None:
    cache = await cached(inner, "u-1")
    async with Checkout(cache, "user") as work:
        state = (await work.load(["u-1"]))["u-1"]
        state.version = 5
        with pytest.raises(Conflict):
            await work.commit(
                [ProfileWrite(state, encode_state(state), b"v5")],
                expected=Expected(versions={"u-1": 4}),  # not what is stored
            )
    assert (await cache.load("user", ["u-1"]))["u-1"].version == 1


async def test_removed_profiles_are_the_stores_again(inner: CountingStore) -> None:
    cache = await cached(inner, "u-1", "u-2")
    forgotten: list[str] = []
    async with Checkout(cache, "user", forget=forgotten.extend) as work:
        await work.load(["u-1", "u-2"])
        await work.commit([write("u-1", b"merged", version=2)], removed=["u-2"])
    assert forgotten == []
    assert await cache.load("user", ["u-2"]) == {}


async def test_reload_reads_the_stored_state_not_the_changed_one(inner: CountingStore) -> None:
    cache = await cached(inner, "u-1")
    work = Checkout(cache, "user")
    changed = (await work.load(["u-1"]))["u-1"]
    changed.version = 7
    again = await work.reload("u-1")
    assert again is not None
    assert again is not changed
    assert again.version == 1
    await work.commit([ProfileWrite(again, encode_state(again), b"v1")])
    work.close()
    assert (await cache.load("user", ["u-1"]))["u-1"] is again  # committed: kept


async def test_a_store_that_keeps_nothing_is_unaffected() -> None:
    store = MemoryProfileStore()
    await store.save("user", [write("u-1", b"v1")])
    async with Checkout(store, "user") as work:
        (await work.load(["u-1"]))["u-1"].version = 3
    assert (await store.load("user", ["u-1"]))["u-1"].version == 1
