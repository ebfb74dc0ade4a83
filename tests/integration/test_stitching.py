"""Identity stitching across workers, on a real Redis (and a real broker end to end).

Stitching sends one person's events through several partitions, hence through several
workers, and a merge rewrites profiles another worker may be writing at that moment.
The commit is conditional (`RedisProfileStore.commit` checks identity pointers and
profile versions): whichever worker commits second must find the first one's write
and compute its batch again on top of it. These tests force both orders of such races
deterministically, replay the batches afterwards, and run randomised anonymous ->
login -> CRM flows through two real worker processes. Every profile must equal the
batch oracle fed all of the person's events under one id, by whichever identity it is
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import ENTITY, BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.integration.stitching_support import (
    Event,
    comparable,
    event,
    figure,
    order,
    person_oracle,
    viewed,
)
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.state_cache import CachedProfileStore

pytestmark = pytest.mark.integration


# --- two workers in one process, over one Redis key prefix ---------------------------


@dataclass
class Hold:
    #: "commit": once the batch is loaded and computed; "load": between the lookup of
    #: its identities and the load of the profiles they point to
    at: str
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class HoldingStore(CachedProfileStore):
    """A worker's store that can hold its batch at one point (`Hold`): that is how a
    test makes another worker commit in between."""

    hold: Hold | None = None
    #: the ids of every load asked of it, in order
    loads: list[list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loads = []

    async def _pause(self, at: str) -> None:
        if (hold := self.hold) is not None and hold.at == at:
            self.hold = None
            hold.reached.set()
            await hold.release.wait()

    async def load(self, entity: str, ids: Sequence[str]) -> Any:
        await self._pause("load")
        self.loads.append(list(ids))
        return await super().load(entity, ids)

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        await self._pause("commit")
        await super().commit(*args, **kwargs)


@dataclass
class Worker:
    """A BatchProcessor owning one partition (its own offsets), as a worker process."""

    processor: BatchProcessor
    store: HoldingStore
    partition: int
    offset: int = 0

    def records(self, events: Sequence[Event]) -> list[Record]:
        first, self.offset = self.offset, self.offset + len(events)
        return [
            Record("events", self.partition, first + i, orjson.dumps(e), 0)
            for i, e in enumerate(events)
        ]


@contextlib.asynccontextmanager
async def two_workers(settings: Settings, prefix: str) -> AsyncIterator[tuple[Worker, Worker]]:
    rules = load_rules(settings.rules_path)
    stores = [
        HoldingStore(RedisProfileStore.from_url(settings.redis_url, prefix), max_profiles=100)
        for _ in "ab"
    ]
    a, b = (
        Worker(BatchProcessor(rules, s, ListDeadLetters(), trust=TRUST_ALL), s, p)
        for p, s in enumerate(stores)
    )
    try:
        yield a, b
    finally:
        for store in stores:
            await store.close()


Batch = tuple[Worker, list[Record]]


async def race(first: Batch, held: Batch, at: str = "commit") -> tuple[BatchReport, BatchReport]:
    """The `held` batch starts and stops `at` a point, the `first` one is processed and
    committed meanwhile, then the held one goes on: it must find the first's write."""
    hold = held[0].store.hold = Hold(at)
    held_task = asyncio.create_task(held[0].processor.process(held[1]))
    reached = asyncio.create_task(hold.reached.wait())
    await asyncio.wait({held_task, reached}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert hold.reached.is_set(), f"the held batch never reached its {at}"
    first_report = await first[0].processor.process(first[1])
    hold.release.set()
    return first_report, await asyncio.wait_for(held_task, 10)


@pytest.fixture
def prefix(settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"{settings.key_prefix}-st-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in redis_client.scan_iter(KeyLayout(prefix).all_keys(), count=1000):
        redis_client.unlink(key)


def stored(redis_client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under `prefix` and its value (strings as bytes, sorted sets as pairs,
    sets of applied messageIds as sorted lists, hashes as dicts)."""
    found: dict[bytes, Any] = {}
    for key in redis_client.scan_iter(KeyLayout(prefix).all_keys(), count=1000):
        kind = redis_client.type(key)
        if kind == b"zset":
            found[key] = redis_client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            found[key] = sorted(redis_client.smembers(key))
        elif kind == b"hash":  # counters (audience sizes, profile counts)
            found[key] = redis_client.hgetall(key)
        else:
            found[key] = redis_client.get(key)
    return found


# --- person P: anonymous profile X and user profile U, merged while both change ------

U, A, EMAIL = "u-p", "a-p", "p@example.com"
X = f"anonymous_id:{A}"
SETUP_A = [  # worker A stores X (and caches it)
    event("x1", 170, anonymousId=A),
    viewed("x2", 160, "sku-1", "books", anonymousId=A),
    order("x3", 150, 12.5, "sku-1", anonymousId=A),
]
SETUP_B = [order("u1", 140, 40.25, "sku-2", userId=U), event("u2", 130, userId=U)]
RACE_A = [  # the login merges X into U
    viewed("x4", 120, "sku-3", "garden", anonymousId=A),
    event("in", 110, "identify", traits={"email": EMAIL, "name": "P"}, userId=U, anonymousId=A),
    order("x5", 100, 7.75, "sku-3", anonymousId=A),  # the device, after the login
]
RACE_B = [  # more events of X and of U
    event("x6", 90, anonymousId=A),
    order("x7", 80, 100.0, "sku-4", anonymousId=A),
    order("u3", 70, 9.5, "sku-5", userId=U),
    event("u4", 60, "identify", traits={"plan": "pro"}, userId=U),
]
EVERY_EVENT = [*SETUP_A, *SETUP_B, *RACE_A, *RACE_B]
ORDERS = ["merge-commits-first", "events-commit-first"]


@dataclass
class Raced:
    """Every batch with the worker that processed it, and the race's two reports."""

    batches: list[Batch]
    held: BatchReport
    first: BatchReport


async def stitch_concurrently(a: Worker, b: Worker, merge_first: bool) -> Raced:
    """Store X (worker A) and U (worker B), each then cached by the worker that wrote
    it, and race the login against the other events, the one asked for first."""
    setup_a, setup_b = a.records(SETUP_A), b.records(SETUP_B)
    for worker, batch in ((a, setup_a), (b, setup_b)):
        assert (await worker.processor.process(batch)).profiles_written == 1
    login, events = (a, a.records(RACE_A)), (b, b.records(RACE_B))
    first, held = await (race(login, events) if merge_first else race(events, login))
    return Raced([(a, setup_a), (b, setup_b), login, events], held, first)


@pytest.mark.parametrize("commits", ORDERS)
def test_a_merge_racing_events_of_both_profiles_loses_and_doubles_nothing(
    settings: Settings, prefix: str, redis_client: redis.Redis, commits: str
) -> None:
    """Whichever batch commits second was computed from profiles the first one has
    changed (merged away, or given events): it must conflict once and be computed
    again on top, so that P ends as one profile holding every event exactly once."""

    async def go() -> tuple[Raced, list[bytes | None]]:
        async with two_workers(settings, prefix) as (a, b):
            raced = await stitch_concurrently(a, b, commits == ORDERS[0])
            lookups = [("user_id", U), ("anonymous_id", A), ("email", EMAIL), ("id", U)]
            return raced, await a.store.inner.read_views(ENTITY, lookups)

    raced, views = asyncio.run(go())

    assert (raced.held.conflicts, raced.first.conflicts) == (1, 0)
    assert views[0] is not None
    assert views.count(views[0]) == len(views), "identities serve different views"
    view = orjson.loads(views[0])
    assert comparable(view) == person_oracle(settings, EVERY_EVENT, U)
    # the oracle's figures, from the events themselves: each one counted exactly once
    orders = [e for e in EVERY_EVENT if e.get("event") == "Order Completed"]
    attributes = view["attributes"]
    assert attributes["purchase_count"] == len(orders) == 5
    assert attributes["lifetime_value"] == sum(e["properties"]["revenue"] for e in orders)
    assert attributes["page_views"] == sum(e["type"] == "page" for e in EVERY_EVENT) == 3
    assert view["version"] == len(EVERY_EVENT)
    keys = KeyLayout(prefix)
    assert redis_client.get(keys.index(ENTITY, "anonymous_id", A)) == U.encode()
    gone = [keys.state(ENTITY, X), keys.view(ENTITY, X), keys.version(ENTITY, X)]
    assert redis_client.exists(*gone) == 0, "the merged-away profile is still stored"


def test_a_conflict_computes_again_only_the_people_whose_profiles_changed(
    settings: Settings, prefix: str
) -> None:
    """Worker A's batch has events of two people; worker B commits an event of one of
    them while A computes. A's commit must conflict on that person only: the other's
    write is committed as computed, and only the first is loaded and computed again."""
    q = "u-q"
    setup_q = [order("q1", 50, 3.0, "sku-9", userId=q)]
    held_events = [order("u5", 40, 11.0, "sku-6", userId=U), event("q2", 30, userId=q)]
    first_events = [viewed("u6", 20, "sku-7", "toys", userId=U)]

    async def go() -> tuple[BatchReport, list[list[str]], list[bytes | None]]:
        async with two_workers(settings, prefix) as (a, b):
            await a.processor.process(a.records(setup_q))
            await b.processor.process(b.records(SETUP_B))
            a.store.loads.clear()
            _, held = await race((b, b.records(first_events)), (a, a.records(held_events)))
            views = await a.store.inner.read_views(ENTITY, [("user_id", U), ("user_id", q)])
            return held, a.store.loads, views

    held, loads, (u_view, q_view) = asyncio.run(go())

    assert held.conflicts == 1
    assert [sorted(ids) for ids in loads] == [sorted([U, q]), [U]]
    assert (held.records, held.profiles_written, held.duplicates) == (2, 2, 0)
    assert u_view is not None
    assert q_view is not None
    every_u = [*SETUP_B, *held_events[:1], *first_events]
    assert comparable(orjson.loads(u_view)) == person_oracle(settings, every_u, U)
    assert comparable(orjson.loads(q_view)) == person_oracle(
        settings, [*setup_q, held_events[1]], q
    )


@pytest.mark.parametrize("commits", ["login-first", "crm-first"])
def test_a_new_identity_claimed_by_two_workers_at_once_ends_in_one_profile(
    settings: Settings, prefix: str, redis_client: redis.Redis, commits: str
) -> None:
    """Both workers read the email as unknown: one links it to the user logging in,
    the other makes a profile of it (a CRM update). Only the identity pointer shows
    what changed (no profile either one loaded did), and it must."""
    login = event("in", 20, "identify", traits={"email": EMAIL}, userId=U, anonymousId=A)
    crm = event("crm", 10, "identify", traits={"email": EMAIL.upper(), "plan": "pro"})

    async def go() -> tuple[BatchReport, bytes | None]:
        async with two_workers(settings, prefix) as (a, b):
            batches = (a, a.records([login])), (b, b.records([crm]))
            _, report = await race(*(batches if commits == "login-first" else batches[::-1]))
            return report, await a.store.inner.read_view(ENTITY, "email", EMAIL)

    held, view = asyncio.run(go())

    assert held.conflicts == 1
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(settings, [login, crm], U)
    assert not redis_client.exists(KeyLayout(prefix).state(ENTITY, f"email:{EMAIL}"))


def test_a_profile_merged_away_between_lookup_and_load_is_a_conflict(
    settings: Settings, prefix: str
) -> None:
    """Worker A made a profile of the email (a CRM update); worker B looks the email up
    for another CRM update, then A logs the person in (the email profile is merged into
    the user's and deleted), then B loads what its lookup named: nothing."""
    crm = [event(f"crm{n}", 30 - n, "identify", traits={"email": EMAIL, "n": n}) for n in (1, 2)]
    login = event("in", 10, "identify", traits={"email": EMAIL}, userId=U)

    async def go() -> tuple[BatchReport, bytes | None]:
        async with two_workers(settings, prefix) as (a, b):
            await a.processor.process(a.records(crm[:1]))
            _, held = await race((a, a.records([login])), (b, b.records(crm[1:])), at="load")
            return held, await a.store.inner.read_view(ENTITY, "email", EMAIL)

    held, view = asyncio.run(go())

    assert held.conflicts >= 1
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(settings, [*crm, login], U)


@pytest.mark.parametrize("commits", ORDERS)
def test_replaying_either_worker_s_batches_after_the_merge_changes_nothing(
    settings: Settings,
    prefix: str,
    redis_client: redis.Redis,
    commits: str,
    request: pytest.FixtureRequest,
) -> None:
    """Each batch again, on its own worker and on the other one (whose cached states
    are stale: the version check must send it back to Redis)."""

    async def go() -> tuple[dict[bytes, Any], list[tuple[int, BatchReport]]]:
        async with two_workers(settings, prefix) as (a, b):
            raced = await stitch_concurrently(a, b, commits == ORDERS[0])
            before = stored(redis_client, prefix)
            replays = []
            for owner, batch in raced.batches:
                for worker in (owner, b if owner is a else a):
                    replays.append((len(batch), await worker.processor.process(batch)))
            return before, replays

    before, replays = asyncio.run(go())

    assert stored(redis_client, prefix) == before
    for events, report in replays:
        assert (report.duplicates, report.profiles_written, report.dead_lettered) == (events, 0, 0)
    figure(request, "replay_conflicts", sum(report.conflicts for _, report in replays))
