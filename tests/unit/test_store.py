from __future__ import annotations

import pytest

from attributes.profile import ProfileState, encode_state
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import PRIMARY_INDEX, ProfileWrite

pytestmark = pytest.mark.anyio


def write(pid: str, view: bytes, *identities: tuple[str, str], version: int = 1) -> ProfileWrite:
    state = ProfileState(id=pid, version=version, identities={"user_id": [pid]})
    return ProfileWrite(state, encode_state(state), view, list(identities))


# --- MemoryProfileStore ---------------------------------------------------------------------


@pytest.fixture
def store() -> MemoryProfileStore:
    return MemoryProfileStore()


async def test_load_returns_only_saved_profiles(store: MemoryProfileStore) -> None:
    assert await store.load("user", ["u-1"]) == {}
    await store.save("user", [write("u-1", b"{}"), write("u-2", b"{}", version=7)])
    loaded = await store.load("user", ["u-2", "u-3"])
    assert list(loaded) == ["u-2"]
    assert loaded["u-2"] == ProfileState(id="u-2", version=7, identities={"user_id": ["u-2"]})


async def test_load_nothing(store: MemoryProfileStore) -> None:
    assert await store.load("user", []) == {}


async def test_loaded_states_are_copies(store: MemoryProfileStore) -> None:
    """The processor mutates what it loads; that must not reach the store unsaved."""
    await store.save("user", [write("u-1", b"{}")])
    (await store.load("user", ["u-1"]))["u-1"].version = 99
    assert (await store.load("user", ["u-1"]))["u-1"].version == 1


async def test_the_stored_state_is_the_encoded_one(store: MemoryProfileStore) -> None:
    """ProfileWrite carries the state already encoded; the store keeps those bytes."""
    saved = write("u-1", b"{}", version=3)
    saved.state.version = 4  # changed after encoding: not what was encoded
    await store.save("user", [saved])
    assert (await store.load("user", ["u-1"]))["u-1"].version == 3


async def test_read_view_by_primary_id(store: MemoryProfileStore) -> None:
    await store.save("user", [write("u-1", b'{"id": "u-1"}')])
    assert await store.read_view("user", PRIMARY_INDEX, "u-1") == b'{"id": "u-1"}'
    assert await store.read_view("user", PRIMARY_INDEX, "u-2") is None


async def test_read_view_by_index(store: MemoryProfileStore) -> None:
    await store.save("user", [write("u-1", b"view-1", ("user_id", "u-1"), ("anonymous_id", "a-1"))])
    assert await store.read_view("user", "user_id", "u-1") == b"view-1"
    assert await store.read_view("user", "anonymous_id", "a-1") == b"view-1"
    assert await store.read_view("user", "anonymous_id", "u-1") is None
    assert await store.read_view("user", "email", "u-1") is None


async def test_only_listed_identities_are_indexed(store: MemoryProfileStore) -> None:
    await store.save("user", [write("u-1", b"view-1")])  # the state has a user_id, unlisted
    assert await store.read_view("user", "user_id", "u-1") is None
    assert await store.read_view("user", PRIMARY_INDEX, "u-1") == b"view-1"


async def test_a_later_save_replaces_the_view_and_keeps_the_index(
    store: MemoryProfileStore,
) -> None:
    await store.save("user", [write("u-1", b"old", ("user_id", "u-1"))])
    await store.save("user", [write("u-1", b"new", version=2)])
    assert await store.read_view("user", "user_id", "u-1") == b"new"
    assert (await store.load("user", ["u-1"]))["u-1"].version == 2


async def test_an_identity_points_at_its_latest_writer(store: MemoryProfileStore) -> None:
    await store.save("user", [write("u-1", b"view-1", ("anonymous_id", "a-1"))])
    await store.save("user", [write("u-2", b"view-2", ("anonymous_id", "a-1"))])
    assert await store.read_view("user", "anonymous_id", "a-1") == b"view-2"


async def test_entities_are_separate(store: MemoryProfileStore) -> None:
    await store.save("user", [write("x-1", b"user", ("email", "e"))])
    await store.save("account", [write("x-1", b"account", ("email", "e"))])
    assert await store.read_view("user", PRIMARY_INDEX, "x-1") == b"user"
    assert await store.read_view("account", "email", "e") == b"account"
    assert list(await store.load("group", ["x-1"])) == []


async def test_close_is_harmless(store: MemoryProfileStore) -> None:
    await store.save("user", [write("u-1", b"view-1")])
    await store.close()
    store.abandon("user", ["u-1"])
    assert await store.read_view("user", PRIMARY_INDEX, "u-1") == b"view-1"
