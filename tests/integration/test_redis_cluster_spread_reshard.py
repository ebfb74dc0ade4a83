"""The spread layout while `redis-cli --cluster reshard` moves one bucket's slot, keys
and all, to another master, as two workers commit batches of the same people (whose
profiles are in that bucket, and a few elsewhere). A command sent while the slot is
half-moved runs on the node that has its keys, or waits (ASK, TRYAGAIN) and is sent
again; a script never runs on half its keys. Every profile must end equal to the
batch answer, and the moved slot hold the bucket's keys."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import orjson
import pytest

from streams.processor import ENTITY
from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible, command
from tests.integration.reshard_support import FILLER, Rounds, rounds_while_moving
from tests.integration.stitching_support import comparable, person_oracle
from tests.integration.test_redis_cluster import oracle_settings, person_event
from tests.integration.test_redis_cluster_spread import BUCKETS, spread_workers
from tests.integration.test_stitching import Hold
from traitflow.spread_layout import SpreadLayout

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def moving_bucket(cluster: LocalCluster) -> tuple[str, int]:
    """A prefix one of whose buckets is in the lowest slot of its node (`move_slot`
    then moves that one slot alone), and that bucket."""
    firsts = {cluster.first_slot(index) for index in range(MASTERS)}
    run = uuid.uuid4().hex[:6]
    for n in range(1_000_000):
        layout = SpreadLayout(f"tfr-{run}-{n}", BUCKETS)
        for bucket in range(BUCKETS):
            if layout.slot(bucket) in firsts:
                return layout.base, bucket
    raise AssertionError("no prefix found")


def test_profiles_equal_the_batch_answer_after_a_buckets_slot_moves_while_events_flow(
    cluster: LocalCluster,
) -> None:
    prefix, bucket = moving_bucket(cluster)
    layout = SpreadLayout(prefix, BUCKETS)
    slot = layout.slot(bucket)
    source = cluster.owner(slot)
    target = (source + 1) % MASTERS
    inside = [u for n in range(5000) if layout.profile_bucket(ENTITY, u := f"u-{n}") == bucket]
    people = [*inside[:20], "u-elsewhere-1", "u-elsewhere-2"]
    rounds = Rounds(people, random.Random(17), person_event, oracle_settings())

    async def go() -> tuple[int, list[bytes | None]]:
        async with spread_workers(cluster, prefix) as (a, b):
            for _ in range(3):
                await rounds.run(a, b)
            tag = layout.tag(bucket)
            during = await rounds_while_moving(cluster, slot, target, tag, rounds, a, b)
            for _ in range(2):
                await rounds.run(a, b)
            views = await a.store.inner.read_views(ENTITY, [("user_id", u) for u in people])
            return during, views

    during, views = asyncio.run(go())

    assert cluster.owner(slot) == target
    assert during >= 1, "no batch was processed while the slot moved"
    moved_to = cluster.client(target)
    try:
        assert command(moved_to, "CLUSTER", "COUNTKEYSINSLOT", slot) > FILLER
    finally:
        moved_to.close()
    rounds.check(views)


def test_scripts_by_node_follow_a_slot_moved_behind_the_clients_back(
    cluster: LocalCluster,
) -> None:
    """A batch's reads, its buckets' commits and its finalize steps are one script per
    node, sent by the client's slot map. Once a slot has moved (the map stale), its old
    node refuses the keys it no longer has (a commit's script writes nothing then), and
    they are sent one by one where they are now."""
    prefix, bucket = moving_bucket(cluster)
    layout = SpreadLayout(prefix, BUCKETS)
    slot = layout.slot(bucket)
    user = next(u for n in range(5000) if layout.profile_bucket(ENTITY, u := f"u-{n}") == bucket)
    rng = random.Random(3)
    made = [person_event(rng, user, n) for n in range(2)]

    async def go() -> tuple[dict[Any, str], list[str], bytes | None]:
        async with spread_workers(cluster, prefix, count=1) as (worker,):
            await worker.processor.process(worker.records(made[:1]))
            store = worker.store.inner
            await asyncio.to_thread(cluster.move_slot, slot, (cluster.owner(slot) + 1) % MASTERS)
            pointers = await store.lookup(ENTITY, [("user_id", user)])
            states = await store.load(ENTITY, [user])
            # the next batch's reads are made; the slot moves before its commit is sent
            hold = worker.store.hold = Hold("commit")
            batch = asyncio.create_task(worker.processor.process(worker.records(made[1:])))
            await asyncio.wait_for(hold.reached.wait(), 10)
            await asyncio.to_thread(cluster.move_slot, slot, (cluster.owner(slot) + 1) % MASTERS)
            hold.release.set()
            await asyncio.wait_for(batch, 30)
            return pointers, list(states), await store.read_view(ENTITY, "id", user)

    pointers, states, view = asyncio.run(go())

    assert pointers == {("user_id", user): user}
    assert states == [user]
    assert view is not None
    want = person_oracle(oracle_settings(), made, user)
    assert comparable(orjson.loads(view)) == want
