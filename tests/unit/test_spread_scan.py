"""The spread layout's walk over every profile (`traitflow.spread_scan`): its cursor,
its pages, and a walk resumed from any checkpoint, with profiles deleted and made on
the way, reading every profile present throughout exactly once. The cluster side
(which node lists a bucket's keys) is tested on a real cluster
(`tests/integration/test_redis_cluster_spread_jobs.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from traitflow.export_jobs import Checkpoint, progress
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls
from traitflow.spread_scan import (
    DONE,
    STATES,
    SpreadWalk,
    decode_cursor,
    encode_cursor,
    fraction,
    page,
)

LAYOUT = SpreadLayout("tf", 8)


def test_a_cursor_names_a_bucket_and_the_last_id_done_there() -> None:
    assert decode_cursor(DONE) == (0, "")
    for bucket, after in ((0, "u-1"), (3, ""), (7, "anonymous_id:a:b")):
        assert decode_cursor(encode_cursor(bucket, after)) == (bucket, after)
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor("1234")  # an option A job's SCAN cursor


def test_a_page_goes_on_past_the_last_id_done_even_if_it_is_gone() -> None:
    ids = ["a", "b", "d", "e"]
    assert page(ids, "", 2) == (["a", "b"], True)
    assert page(ids, "b", 2) == (["d", "e"], False)
    assert page(ids, "c", 5) == (["d", "e"], False)  # "c" deleted since: not skipped past
    assert page(ids, "e", 2) == ([], False)


def test_the_fraction_is_the_share_of_buckets_walked() -> None:
    assert fraction(DONE, 8, 0) == 0.0
    assert fraction("2:u", 8, 3) == 0.25
    assert fraction(DONE, 8, 3) == 1.0
    half = Checkpoint(cursor="4:u-9", rounds=2, exported=10, running_s=1.0, buckets=8)
    assert progress(half).fraction == 0.5
    assert progress(half).estimated_total == 20


class Listed(SpreadWalk):
    """A walk over profiles kept in a dict (id -> value), listed per bucket as the
    cluster would list them."""

    def __init__(self, profiles: dict[str, bytes]) -> None:
        super().__init__(cast(ClusterCalls, self), LAYOUT)
        self.profiles = profiles
        self.listings = 0

    async def listed(self, entity: str, kind: str, bucket: int) -> list[str]:
        self.listings += 1
        return sorted(p for p in self.profiles if LAYOUT.profile_bucket(entity, p) == bucket)

    async def get(self, keys: Sequence[str]) -> list[Any]:
        ids = [key.rpartition(":")[2] for key in keys]
        return [self.profiles.get(pid) for pid in ids]


def test_a_walk_resumed_from_each_checkpoint_reads_every_lasting_profile_once() -> None:
    lasting = {f"u-{n}": b"v" for n in range(40)}

    async def walk(stop_after: int) -> list[str]:
        profiles = dict(lasting)
        seen: list[str] = []
        cursor, rounds = DONE, 0
        while True:
            # a new walker each round from the saved cursor (a resumed job)
            cursor, found = await Listed(profiles).round("user", STATES, cursor, 3)
            seen += [pid for pid, _ in found]
            rounds += 1
            if rounds == stop_after:
                profiles[f"new-{rounds}"] = b"n"  # made meanwhile: read or not
                profiles.pop(seen[-1], None)  # a profile done, then deleted
                profiles.pop(f"gone-{rounds}", None)
            if cursor == DONE:
                return [pid for pid in seen if pid.startswith("u-")]

    for stop_after in range(1, 16):
        seen = asyncio.run(walk(stop_after))
        assert sorted(seen) == sorted(lasting), stop_after


def test_a_bucket_larger_than_a_round_is_listed_once() -> None:
    profiles = {f"u-{n}": b"v" for n in range(200)}
    walker = Listed(profiles)

    async def walk() -> int:
        cursor, rounds = DONE, 0
        while True:
            cursor, _ = await walker.round("user", STATES, cursor, 5)
            rounds += 1
            if cursor == DONE:
                return rounds

    rounds = asyncio.run(walk())
    assert rounds >= 40
    assert walker.listings == LAYOUT.buckets


def test_a_walk_from_another_cursor_lists_its_bucket_again() -> None:
    """A walker kept between jobs (an API process's) does not reuse a listing made
    for another walk: a profile made since would be missed."""
    profiles = {f"u-{n}": b"v" for n in range(40)}
    walker = Listed(profiles)

    async def walk(cursor: str) -> list[str]:
        seen = []
        while True:
            cursor, found = await walker.round("user", STATES, cursor, 100)
            seen += [pid for pid, _ in found]
            if cursor == DONE:
                return seen

    assert len(asyncio.run(walk(DONE))) == 40  # its last round listed the last bucket
    last = LAYOUT.buckets - 1
    made = next(p for n in range(1000) if LAYOUT.profile_bucket("user", p := f"m-{n}") == last)
    profiles[made] = b"n"
    assert made in asyncio.run(walk(encode_cursor(last, "")))  # a job resumed there
