"""The steps a spread commit's intent holds (`traitflow.spread_claims`), run by the
`FINALIZE` and `CLAIM` scripts on a real node of the local cluster: each does what it
says only while the key holds the commit's own claim or lock, keeps an expiring key's
lifetime, and does nothing the second time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.test_redis_cluster_spread import spread_store
from traitflow import spread_claims as claims
from traitflow.spread_claims import CLAIM, CLAIMED, LOCKED

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def test_each_step_acts_only_on_its_own_claim_and_does_nothing_twice(
    cluster: LocalCluster,
) -> None:
    store = spread_store(cluster, f"tfz-{uuid.uuid4().hex[:8]}")
    tag = store.layout.tag(5)
    key = {name: f"{tag}:{name}" for name in ("p", "q", "r", "v", "s", "t", "x", "z", "d")}
    mine = claims.held_value(CLAIMED, "c1", 10**13, 5)
    theirs = claims.held_value(CLAIMED, "c2", 10**13, 5)
    lock = claims.held_value(LOCKED, "c1", 10**13, 5)
    steps = [
        claims.point(key["p"], "c1", "u-new"),  # mine: set, lifetime kept
        claims.point(key["q"], "c1", "u-new"),  # another commit's: left
        claims.release(key["r"], "c1"),  # mine: back to its old value
        claims.drop(key["v"], "c1", [key["s"]]),  # locked by me: deleted, with the state
        claims.set_value(key["t"], b"tomb"),
        claims.delete_if(key["x"], "u-gone"),
        claims.expire_if(key["z"], "u-z", 5000),
        claims.uncount(key["d"], ["u-old"]),
    ]

    async def go() -> list[Any]:
        run = store._run
        try:
            await run(
                [
                    ("SET", key["p"], mine + b"u-old", "PX", 60_000),
                    ("SET", key["q"], theirs + b"u-old"),
                    ("SET", key["r"], mine + b"u-before"),
                    ("SET", key["v"], lock + b"7"),
                    ("SET", key["s"], b"state"),
                    ("SET", key["x"], b"u-other"),
                    ("SET", key["z"], b"u-z"),
                    ("ZADD", key["d"], 1, "u-old", 2, "u-kept"),
                ]
            )
            await store.protocol.finalize(steps)
            once = await _state(run, key)
            await store.protocol.finalize(steps)  # a recovery running them again
            twice = await _state(run, key)
            # a claim checks the value it expects, and never takes a held key
            claimed = await run(
                [
                    ("EVAL", CLAIM, 1, key["p"], "1", b"u-old", mine),
                    ("EVAL", CLAIM, 1, key["q"], "0", b"", mine),
                    ("EVAL", CLAIM, 1, key["t"], "1", b"tomb", mine),
                ]
            )
            return [once, twice, claimed, await run([("GET", key["t"])])]
        finally:
            await store.close()

    once, twice, claimed, after = asyncio.run(go())

    assert once == twice
    assert once["p"] == (b"u-new", True)  # set, its lifetime kept
    assert once["q"] == (theirs + b"u-old", False)
    assert once["r"] == (b"u-before", False)
    assert once["v"] == (None, False)
    assert once["s"] == (None, False)
    assert once["t"] == (b"tomb", False)
    assert once["x"] == (b"u-other", False)  # pointed elsewhere: kept
    assert once["z"] == (b"u-z", True)
    assert once["d"] == [b"u-kept"]
    assert [int(status) for status, _ in claimed] == [2, 1, 0]
    assert after == [mine + b"tomb"]


async def _state(run: Any, key: dict[str, str]) -> dict[str, Any]:
    names = [n for n in key if n != "d"]
    found = await run([c for n in names for c in (("GET", key[n]), ("PTTL", key[n]))])
    state: dict[str, Any] = {n: (found[2 * i], found[2 * i + 1] > 0) for i, n in enumerate(names)}
    state["d"] = (await run([("ZRANGE", key["d"], 0, -1)]))[0]
    return state
