"""`traitflow.redis_copy`: every key under the old prefix lands under the new one with
its value and TTL, in batches, a second run overwrites the first's, keys that vanish
between SCAN and DUMP are counted apart, and the source's writes are measured (an
in-memory stand-in for redis-py's blocking client: DUMP's payload is the value)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from traitflow.redis_copy import copy_keys, count_keys, renamed, writes_during


class FakeRedis:
    def __init__(self, data: dict[bytes, tuple[bytes, int]] | None = None) -> None:
        #: key -> (value, PTTL: -1 for none)
        self.data = dict(data or {})
        self.dirty = 0
        self.scans = 0
        self.vanish: set[bytes] = set()  # keys that expire right after SCAN returns them

    def scan(self, cursor: int = 0, match: Any = None, count: Any = None) -> Any:
        self.scans += 1
        assert match.endswith("*")
        assert count
        keys = sorted(k for k in self.data if k.startswith(match[:-1].encode()))
        page = keys[cursor : cursor + count]
        for key in self.vanish & set(page):
            del self.data[key]
        following = cursor + count
        return (following if following < len(keys) else 0), page

    def info(self, section: Any = None) -> Any:
        assert section == "persistence"
        return {"rdb_changes_since_last_save": self.dirty}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.queued: list[Callable[[], Any]] = []

    def dump(self, key: bytes) -> None:
        self.queued.append(lambda: self.redis.data.get(key, (None, 0))[0])

    def pttl(self, key: bytes) -> None:
        self.queued.append(lambda: self.redis.data[key][1] if key in self.redis.data else -2)

    def restore(self, key: bytes, ttl: int, payload: bytes, replace: bool = False) -> None:
        assert replace  # a second run overwrites the first's
        self.queued.append(lambda: self.redis.data.__setitem__(key, (payload, ttl or -1)))
        self.redis.dirty += 1

    def execute(self) -> list[Any]:
        return [call() for call in self.queued]


def source_of(n: int) -> FakeRedis:
    data = {f"tf:s:user:u{i}".encode(): (f"v{i}".encode(), -1 if i % 2 else 5000) for i in range(n)}
    data[b"tfx:other"] = (b"not ours", -1)  # another prefix that starts alike
    data[b"other:tf:x"] = (b"not ours", -1)
    return FakeRedis(data)


def test_every_key_is_copied_renamed_with_its_value_and_ttl_in_batches() -> None:
    source, target = source_of(23), FakeRedis({b"{tf}:unrelated": (b"kept", -1)})
    seen: list[int] = []
    result = copy_keys(source, target, "tf", "{tf}", batch=5, progress=seen.append)
    assert (result.copied, result.vanished, result.source_writes) == (23, 0, 0)
    assert seen == [5, 10, 15, 20, 23]  # progress after each batch
    for key, (value, ttl) in source.data.items():
        if key.startswith(b"tf:"):
            assert target.data[b"{tf}" + key[2:]] == (value, ttl)
    assert b"{tf}x:other" not in target.data
    assert b"{tf}:unrelated" in target.data
    assert count_keys(source, "tf", 4) == 23
    assert count_keys(target, "{tf}", 4) == 24


def test_a_second_run_overwrites_what_the_first_copied() -> None:
    source, target = source_of(7), FakeRedis()
    copy_keys(source, target, "tf", "{tf}", batch=3)
    source.data[b"tf:s:user:u1"] = (b"changed", -1)
    again = copy_keys(source, target, "tf", "{tf}", batch=3)
    assert again.copied == 7
    assert target.data[b"{tf}:s:user:u1"] == (b"changed", -1)
    assert count_keys(target, "{tf}") == 7


def test_keys_gone_between_scan_and_dump_are_counted_apart() -> None:
    source, target = source_of(6), FakeRedis()
    source.vanish = {b"tf:s:user:u2", b"tf:s:user:u4"}
    result = copy_keys(source, target, "tf", "{tf}", batch=10)
    assert (result.copied, result.vanished) == (4, 2)
    assert b"{tf}:s:user:u2" not in target.data


def test_writes_to_the_source_during_the_copy_are_reported() -> None:
    source, target = source_of(4), FakeRedis()

    class Writing(FakeRedis):
        def scan(self, cursor: int = 0, match: Any = None, count: Any = None) -> Any:
            self.dirty += 3  # a worker committing meanwhile
            return super().scan(cursor, match, count)

    writing = Writing(source.data)
    assert copy_keys(writing, target, "tf", "{tf}", batch=2).source_writes == 6
    quiet = FakeRedis()
    assert writes_during(quiet, 1.0, sleep=lambda s: None) == 0

    def write(seconds: float) -> None:
        quiet.dirty += 2

    assert writes_during(quiet, 1.0, sleep=write) == 2


def test_renaming_keeps_the_rest_of_the_key_and_refuses_another_prefix() -> None:
    assert renamed(b"tf:v:user:a:b", "tf", "{tf}") == b"{tf}:v:user:a:b"
    assert renamed(b"tf:x", "tf", "tf2") == b"tf2:x"
    with pytest.raises(ValueError, match="not under"):
        renamed(b"tfx:x", "tf", "{tf}")
