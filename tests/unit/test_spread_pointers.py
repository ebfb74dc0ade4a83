"""The API's pointer cache on the spread layout (`traitflow.spread_pointers`): bounded
in size and age, and the check a cached guess must pass before its profile is served.
On the cluster (merges, erasures, expiry): tests/integration/test_redis_cluster_spread_reads.py."""

from __future__ import annotations

import msgspec

from traitflow import spread_claims as claims
from traitflow.spread_pointers import PointerCache, validates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view(**identities: list[str]) -> bytes:
    return msgspec.json.encode(
        {"id": "u-1", "entity": "user", "identities": identities, "traits": {"x": 1}}
    )


def test_an_entry_is_served_until_its_age_then_forgotten() -> None:
    clock = Clock()
    cache = PointerCache(size=10, ttl_s=5.0, clock=clock)
    assert cache.get("user", "email", "a@x.io") is None
    cache.put("user", "email", "a@x.io", "u-1")
    clock.now += 4.9
    assert cache.get("user", "email", "a@x.io") == "u-1"
    assert cache.get("account", "email", "a@x.io") is None  # per entity
    clock.now += 0.1
    assert cache.get("user", "email", "a@x.io") is None
    assert len(cache) == 0


def test_the_least_recently_used_entries_go_past_the_size() -> None:
    cache = PointerCache(size=3, ttl_s=60.0, clock=Clock())
    for n in range(3):
        cache.put("user", "email", f"{n}@x.io", f"u-{n}")
    assert cache.get("user", "email", "0@x.io") == "u-0"  # used: kept
    cache.put("user", "email", "3@x.io", "u-3")
    assert len(cache) == 3
    assert cache.get("user", "email", "1@x.io") is None
    assert [cache.get("user", "email", f"{n}@x.io") for n in (0, 2, 3)] == ["u-0", "u-2", "u-3"]


def test_forget_and_put_again_replace_the_entry() -> None:
    cache = PointerCache(clock=Clock())
    cache.put("user", "anonymous_id", "a-1", "anonymous_id:a-1")
    cache.put("user", "anonymous_id", "a-1", "u-1")
    assert cache.get("user", "anonymous_id", "a-1") == "u-1"
    cache.forget("user", "anonymous_id", "a-1")
    cache.forget("user", "anonymous_id", "a-1")
    assert cache.get("user", "anonymous_id", "a-1") is None


def test_a_guess_is_served_only_if_the_profile_lists_the_identity() -> None:
    listed = view(user_id=["u-1"], email=["a@x.io", "b@x.io"], anonymous_id=["a-1"])
    assert validates(listed, b"7", "email", "b@x.io")
    assert validates(listed, b"7", "anonymous_id", "a-1")
    assert not validates(listed, b"7", "email", "c@x.io")  # moved to another profile
    assert not validates(listed, b"7", "anonymous_id", "a@x.io")  # another type's value
    assert not validates(view(), b"7", "email", "a@x.io")


def test_a_guess_is_not_served_when_the_profile_is_gone_or_being_merged_away() -> None:
    listed = view(email=["a@x.io"])
    assert not validates(None, b"7", "email", "a@x.io")  # erased, expired, merged
    assert not validates(listed, None, "email", "a@x.io")
    lock = claims.held_value(claims.LOCKED, "c1", 10**13, 4) + b"7"
    assert not validates(listed, lock, "email", "a@x.io")  # a merge in flight


def test_a_view_that_does_not_decode_proves_nothing() -> None:
    assert not validates(b"not json", b"7", "email", "a@x.io")
    assert not validates(b'{"identities": {"email": "a@x.io"}}', b"7", "email", "a@x.io")
    assert not validates(b'{"identities": ["email"]}', b"7", "email", "a@x.io")
