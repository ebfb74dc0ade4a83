"""What the slot-migration tests of both cluster layouts share (`test_redis_cluster`,
option A; `test_redis_cluster_spread_reshard`, option B): rounds in which two workers
commit the same people's events at once, run while `redis-cli --cluster reshard` moves
a slot, and the check of every profile against the batch answer."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.integration.cluster import LocalCluster
from tests.integration.stitching_support import comparable, person_oracle
from tests.integration.test_stitching import Worker
from traitflow.config import Settings

#: filler keys put in the moving slot, so that the move lasts seconds
FILLER = 20_000


@dataclass
class Rounds:
    """Rounds of one event per person for each of two workers, committed at once (each
    person's events split between them, so their commits conflict); `everyone` keeps
    each person's events for the batch answer, computed with `settings`' rules.
    `event(rng, user, n)` is a person's event `n`."""

    people: Sequence[str]
    rng: random.Random
    event: Callable[[random.Random, str, int], Any]
    settings: Settings
    everyone: dict[str, list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.everyone = {user: [] for user in self.people}

    async def run(self, a: Worker, b: Worker) -> None:
        batches: list[list[Any]] = [[], []]
        for user in self.people:
            for batch in batches:
                batch.append(self.event(self.rng, user, len(self.everyone[user])))
                self.everyone[user].append(batch[-1])
        await asyncio.gather(
            a.processor.process(a.records(batches[0])),
            b.processor.process(b.records(batches[1])),
        )

    def check(self, views: Sequence[bytes | None]) -> None:
        """Every person's view (by `user_id`, in `people`' order) is the batch answer."""
        for user, view in zip(self.people, views, strict=True):
            assert view is not None, user
            want = person_oracle(self.settings, self.everyone[user], user)
            assert comparable(orjson.loads(view)) == want, user


@dataclass
class PublishedRounds:
    """A real worker's input: rounds of one event per person, published to a topic
    (`publish`); `everyone` keeps each person's events for the batch answer.
    `event(rng, user, n)` is a person's event `n`."""

    people: Sequence[str]
    rng: random.Random
    event: Callable[[random.Random, str, int], Any]
    publish: Callable[[list[Any]], object]
    everyone: dict[str, list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.everyone = {user: [] for user in self.people}

    def send(self, rounds: int) -> None:
        batch = []
        for _ in range(rounds):
            for user in self.people:
                self.everyone[user].append(self.event(self.rng, user, len(self.everyone[user])))
                batch.append(self.everyone[user][-1])
        self.publish(batch)


async def rounds_while_moving(
    cluster: LocalCluster, slot: int, target: int, tag: str, rounds: Rounds, a: Worker, b: Worker
) -> int:
    """Fill `slot` (whose hash tag is `tag`) with `FILLER` keys, move it to master
    `target` in a thread, and run `rounds` until it is moved; how many ran meanwhile.
    What the move raised is raised here."""
    node = cluster.client(cluster.owner(slot))
    try:
        for start in range(0, FILLER, 1000):
            node.mset({f"{tag}:filler:{n}": n for n in range(start, start + 1000)})
    finally:
        node.close()
    moved = threading.Event()
    failed: list[BaseException] = []

    def move() -> None:
        try:
            cluster.move_slot(slot, target, pipeline=2)
        except BaseException as exc:
            failed.append(exc)
        moved.set()

    mover = threading.Thread(target=move)
    mover.start()
    during = 0
    try:
        while not moved.is_set() and during < 2000:
            await rounds.run(a, b)
            during += 1
    finally:
        await asyncio.to_thread(mover.join)
    if failed:
        raise failed[0]
    return during
