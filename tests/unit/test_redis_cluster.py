"""Redis Cluster mode's parts that need no server (`traitflow.redis_cluster`): the hash
tag, how the slot's owner is found and moved, and which errors the API's client
follows, waits out or raises. The cluster itself: tests/integration/test_redis_cluster.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from traitflow.key_layout import KeyLayout
from traitflow.redis_cluster import (
    ClusterRespClient,
    SlotOwner,
    hash_tag,
    is_hash_tag,
    slot_of,
)
from traitflow.resp import Address, RespConnectionError, RespError


def test_the_prefix_becomes_one_hash_tag() -> None:
    assert hash_tag("tf") == "{tf}"
    assert hash_tag("{tf}") == "{tf}"
    assert is_hash_tag("{tf-test.1}")
    assert not is_hash_tag("tf")
    assert not is_hash_tag("{}")
    assert not is_hash_tag("{a}b}")


def test_every_key_under_the_tag_hashes_to_its_slot() -> None:
    """Whatever the ids hold (braces too: only the first {...} of a key counts)."""
    keys = KeyLayout(hash_tag("tf"))
    names = [
        keys.state("user", "u-{1}"),
        keys.view("user", "x"),
        keys.index("user", "email", "{ada}@example.com"),
        keys.expiries("user", "events/0"),
        keys.outbox("events/0"),
        keys.rules_version(),
        keys.messages("user", "web", 3),
        keys.audience_sizes("user"),
        keys.export_job("ab12"),
    ]
    assert {slot_of(name) for name in names} == {slot_of("{tf}")}
    assert slot_of("{tf}") != slot_of("{tf2}")


def slots(*ranges: tuple[int, int, int]) -> list[Any]:
    """CLUSTER SLOTS's reply for (start, end, port) ranges on 127.0.0.1."""
    return [[start, end, [b"127.0.0.1", port, b"id"]] for start, end, port in ranges]


CLUSTER = slots((0, 5460, 7000), (5461, 10922, 7001), (10923, 16383, 7002))


def test_the_owner_is_read_from_the_slot_map_and_moved_by_moved() -> None:
    asked: list[tuple[str, int]] = []

    async def ask(host: str, port: int) -> Any:
        asked.append((host, port))
        if port == 7000:
            raise OSError("down")
        return CLUSTER

    async def go() -> None:
        owner = SlotOwner(6000, [("127.0.0.1", 7000), ("127.0.0.1", 7002)], ask)
        assert await owner.address() == ("127.0.0.1", 7001)  # the first seed is down
        assert await owner.address() == ("127.0.0.1", 7001)  # kept: not asked again
        assert asked == [("127.0.0.1", 7000), ("127.0.0.1", 7002)]
        owner.moved(6000, "127.0.0.1", 7002)
        assert await owner.address() == ("127.0.0.1", 7002)
        assert len(asked) == 2
        owner.moved(99, "127.0.0.1", 7000)  # another slot's: ask the cluster again
        assert await owner.address() == ("127.0.0.1", 7001)
        assert asked[-1] == ("127.0.0.1", 7002)  # the last owner is asked first

    asyncio.run(go())


def test_no_node_answering_is_a_connection_error() -> None:
    async def ask(host: str, port: int) -> Any:
        raise OSError("refused")

    async def go() -> None:
        with pytest.raises(ConnectionError, match="7000: refused"):
            await SlotOwner(1, [("127.0.0.1", 7000)], ask).address()

    asyncio.run(go())


class Replies:
    """An attempt that raises or returns the given replies, one per call."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls = 0

    def __call__(self) -> Awaitable[Any]:
        self.calls += 1
        reply = self.replies.pop(0)

        async def answer() -> Any:
            if isinstance(reply, BaseException):
                raise reply
            return reply

        return answer()


def client(timeout_s: float = 0.3) -> ClusterRespClient:
    async def ask(host: str, port: int) -> Any:
        return CLUSTER

    owner = SlotOwner(6000, [("127.0.0.1", 7000)], ask)
    return ClusterRespClient(Address(host="127.0.0.1", port=7000), owner, timeout_s)


def follow(resp: ClusterRespClient, attempt: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(resp._follow(attempt))


def test_the_api_client_follows_moved_to_the_node_named() -> None:
    resp = client()
    attempt = Replies(RespError("MOVED 6000 127.0.0.1:7002"), b"view")
    assert follow(resp, attempt) == b"view"
    assert attempt.calls == 2
    assert resp.owner._address == ("127.0.0.1", 7002)
    assert resp._moves == 1


def test_the_api_client_waits_out_a_migrating_slot_then_gives_up() -> None:
    """ASK, TRYAGAIN and a script's non-local key are tried again until the timeout;
    then the error is raised (the API answers 503)."""
    resp = client()
    half_moved = RespError("ERR Script attempted to access a non local key in a cluster node")
    attempt = Replies(RespError("ASK 6000 127.0.0.1:7002"), half_moved, b"view")
    assert follow(resp, attempt) == b"view"
    assert resp._moves == 0

    forever = Replies(*[RespError("TRYAGAIN Multiple keys request during rehashing")] * 200)
    with pytest.raises(RespError) as raised:
        follow(client(timeout_s=0.2), forever)
    assert raised.value.code == "TRYAGAIN"
    assert 3 <= forever.calls < 200


def test_the_api_client_raises_other_errors_at_once() -> None:
    attempt = Replies(RespError("WRONGTYPE Operation against a key"), b"never")
    with pytest.raises(RespError, match="WRONGTYPE"):
        follow(client(), attempt)
    assert attempt.calls == 1
    lost = Replies(RespConnectionError("connection to Redis lost"), b"never")
    with pytest.raises(RespConnectionError):  # no MOVED dropped it: not sent again
        follow(client(), lost)
