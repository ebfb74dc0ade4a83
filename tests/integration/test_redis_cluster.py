"""The local Redis Cluster the cluster tests run on (`tests/integration/cluster.py`):
three masters that cover every slot, and a slot that `move_slot` moves, keys and all.

The cluster tests run in `make test` (the `cluster` marker is not excluded): a cluster
starts in a few seconds and the file takes well under a minute. `pytest -m cluster`
runs them alone."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import ENTITY, BatchProcessor, BatchReport, ListDeadLetters
from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible, command
from tests.integration.reshard_support import Rounds, rounds_while_moving
from tests.integration.stitching_support import (
    Event,
    comparable,
    event,
    order,
    person_oracle,
    viewed,
)
from tests.integration.test_stitching import (
    EMAIL,
    EVERY_EVENT,
    ORDERS,
    A,
    HoldingStore,
    U,
    Worker,
    X,
    race,
    stitch_concurrently,
)
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_cluster import (
    ClusterRespClient,
    cluster_sync_client,
    hash_tag,
    slot_of,
)
from traitflow.redis_store import RedisProfileStore

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def test_three_masters_cover_every_slot(cluster: LocalCluster) -> None:
    client = cluster.client(0)
    try:
        info = command(client, "CLUSTER", "INFO").decode()
        ranges = command(client, "CLUSTER", "SLOTS")
    finally:
        client.close()
    assert "cluster_state:ok" in info
    assert "cluster_slots_assigned:16384" in info
    assert len({int(master[1]) for _, _, master, *_ in ranges}) == MASTERS


def test_a_slot_moves_with_its_keys(cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        slot = slot_of("{fixture}")
        client.mset({f"{{fixture}}:{n}": n for n in range(500)})
        source = cluster.owner(slot)
        target = (source + 1) % MASTERS
        cluster.move_slot(slot, target)
        assert cluster.owner(slot) == target
        # the old owner redirects, the new one holds every key
        old = cluster.client(source)
        with pytest.raises(redis.exceptions.MovedError):
            old.get("{fixture}:1")
        old.close()
        new = cluster.client(target)
        assert command(new, "CLUSTER", "COUNTKEYSINSLOT", slot) == 500
        new.close()
        assert client.get("{fixture}:499") == b"499"
    finally:
        client.close()


# --- the worker's store on the cluster: keys under one hash tag ------------------------

RULES = ROOT / "examples" / "rules.yaml"


@pytest.fixture
def prefix() -> str:
    """A hash tag of the test's own: every key it writes is in that tag's slot."""
    return hash_tag(f"tfc-{uuid.uuid4().hex[:8]}")


@contextlib.asynccontextmanager
async def cluster_workers(
    cluster: LocalCluster, prefix: str, count: int = 2
) -> AsyncIterator[list[Worker]]:
    """`count` workers (`BatchProcessor`s, each owning a partition) whose stores reach
    the cluster as a worker process's does: made from settings with
    TRAITFLOW_REDIS_CLUSTER=true (`traitflow.redis_client` builds their clients)."""
    rules = load_rules(RULES)
    settings = Settings(redis_url=cluster.url, redis_cluster=True, key_prefix=prefix)
    stores = [
        HoldingStore(RedisProfileStore.from_url(settings, settings.key_prefix), max_profiles=100)
        for _ in range(count)
    ]
    workers = [
        Worker(BatchProcessor(rules, store, ListDeadLetters(), trust=TRUST_ALL), store, partition)
        for partition, store in enumerate(stores)
    ]
    try:
        yield workers
    finally:
        for store in stores:
            await store.close()


def oracle_settings() -> Settings:
    return Settings(rules_path=RULES)


def test_keys_under_the_tag_share_one_slot(prefix: str) -> None:
    keys = KeyLayout(prefix)
    names = [
        keys.state(ENTITY, "u-1"),
        keys.index(ENTITY, "email", "{odd}@x.io"),
        keys.outbox("events/3"),
        keys.rules_version(),
        keys.messages(ENTITY, "web", 12),
    ]
    assert {slot_of(name) for name in names} == {slot_of(prefix)}


def test_a_blocking_client_reaches_the_node_that_serves_the_tag(
    cluster: LocalCluster, prefix: str
) -> None:
    """What start checks and CLI commands use: whichever node the URL names."""
    client = cluster_sync_client(cluster.url, prefix)
    owner = cluster.client(cluster.owner(slot_of(prefix)))
    try:
        client.set(f"{prefix}:probe", b"here")
        assert owner.get(f"{prefix}:probe") == b"here"
        assert (
            client.connection_pool.connection_kwargs["port"]
            == owner.connection_pool.connection_kwargs["port"]
        )
    finally:
        client.close()
        owner.close()


@pytest.mark.parametrize("commits", ORDERS)
def test_a_merge_racing_events_on_the_cluster_loses_and_doubles_nothing(
    cluster: LocalCluster, prefix: str, commits: str
) -> None:
    """test_stitching's race of two workers, on the cluster: whichever commits second
    conflicts once and is computed again on top; every identity serves one view, the
    batch answer for all of the person's events."""

    async def go() -> tuple[Any, list[bytes | None]]:
        async with cluster_workers(cluster, prefix) as (a, b):
            raced = await stitch_concurrently(a, b, commits == ORDERS[0])
            lookups = [("user_id", U), ("anonymous_id", A), ("email", EMAIL), ("id", U)]
            return raced, await a.store.inner.read_views(ENTITY, lookups)

    raced, views = asyncio.run(go())

    assert (raced.held.conflicts, raced.first.conflicts) == (1, 0)
    assert views[0] is not None
    assert views.count(views[0]) == len(views), "identities serve different views"
    view = orjson.loads(views[0])
    assert comparable(view) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    assert view["version"] == len(EVERY_EVENT)
    owner = cluster.client(cluster.owner(slot_of(prefix)))
    try:
        keys = KeyLayout(prefix)
        assert owner.get(keys.index(ENTITY, "anonymous_id", A)) == U.encode()
        assert owner.exists(keys.state(ENTITY, X), keys.view(ENTITY, X)) == 0
    finally:
        owner.close()


@pytest.mark.parametrize("commits", ["login-first", "crm-first"])
def test_a_new_identity_claimed_by_two_workers_on_the_cluster_ends_in_one_profile(
    cluster: LocalCluster, prefix: str, commits: str
) -> None:
    login = event("in", 20, "identify", traits={"email": EMAIL}, userId=U, anonymousId=A)
    crm = event("crm", 10, "identify", traits={"email": EMAIL.upper(), "plan": "pro"})

    async def go() -> tuple[BatchReport, bytes | None]:
        async with cluster_workers(cluster, prefix) as (a, b):
            batches = (a, a.records([login])), (b, b.records([crm]))
            _, report = await race(*(batches if commits == "login-first" else batches[::-1]))
            return report, await a.store.inner.read_view(ENTITY, "email", EMAIL)

    held, view = asyncio.run(go())

    assert held.conflicts == 1
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(oracle_settings(), [login, crm], U)


def person_event(rng: random.Random, user: str, n: int) -> Event:
    """Event `n` of a person: an order, a product view or a page, 6 s after event n - 1
    (distinct times: the first and most recent values do not depend on arrival)."""
    mid, ago = f"{user}-{n}", 600 - n / 10
    kind = rng.choice(["order", "viewed", "page"])
    if kind == "order":
        revenue = round(rng.uniform(1, 200), 2)
        return order(mid, ago, revenue, f"sku-{rng.randrange(9)}", userId=user)
    if kind == "viewed":
        product, category = f"sku-{rng.randrange(9)}", rng.choice(["toys", "books"])
        return viewed(mid, ago, product, category, userId=user)
    return event(mid, ago, userId=user)


def first_slot_prefix(cluster: LocalCluster) -> str:
    """A hash tag whose slot is the lowest of its node's: `move_slot` then moves that
    one slot alone, so its keys start migrating at once."""
    firsts = {cluster.first_slot(index) for index in range(MASTERS)}
    run = uuid.uuid4().hex[:6]
    return next(
        tag for n in range(1_000_000) if slot_of(tag := hash_tag(f"tfc-{run}-{n}")) in firsts
    )


def test_profiles_equal_the_batch_answer_after_the_slot_moves_while_events_flow(
    cluster: LocalCluster,
) -> None:
    """Two workers commit batches of the same people (each person's events split
    between them, so their commits conflict) while `redis-cli --cluster reshard` moves
    the tag's slot, keys and all, to another master, a few keys per MIGRATE (filler
    keys make it last seconds). Commits made while the slot is half-moved wait (ASK,
    TRYAGAIN), then follow MOVED to the new owner, and so does the API's client, which
    was connected to the old one. Every profile must end equal to the batch answer."""
    prefix = first_slot_prefix(cluster)
    slot = slot_of(prefix)
    source = cluster.owner(slot)
    target = (source + 1) % MASTERS
    people = [f"u-{p}" for p in range(40)]
    rounds = Rounds(people, random.Random(7), person_event, oracle_settings())

    async def go() -> tuple[int, list[bytes | None]]:
        async with cluster_workers(cluster, prefix) as (a, b):
            for _ in range(5):  # profiles exist before the move
                await rounds.run(a, b)
            inner = a.store.inner
            assert isinstance(inner, RedisProfileStore)
            reads = inner.reads
            assert isinstance(reads, ClusterRespClient)
            # the API's client is connected to the old owner when the slot moves
            assert None not in await a.store.inner.read_views(ENTITY, [("user_id", "u-0")])
            during = await rounds_while_moving(cluster, slot, target, prefix, rounds, a, b)
            for _ in range(3):  # and after: the new owner takes commits
                await rounds.run(a, b)
            lookups = [("user_id", user) for user in people]
            views = await a.store.inner.read_views(ENTITY, lookups)
            assert reads._moves == 1, "the reads did not follow MOVED to the new owner"
            return during, views

    during, views = asyncio.run(go())

    assert cluster.owner(slot) == target
    # a round's commits wait out the migration (ASK, TRYAGAIN): what lasts is its length
    assert during >= 1, "no batch was processed while the slot moved"
    rounds.check(views)
