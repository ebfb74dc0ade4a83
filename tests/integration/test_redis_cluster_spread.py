"""The spread layout (docs/redis-cluster.md, option B) on the local 3-master cluster
(`tests/integration/cluster.py`): profiles on every shard, commits of one bucket's
profiles as single-slot scripts, and links and merges across slots through claims,
intents and finalize (`traitflow.spread_claims`), raced by two workers as the tag
layout's tests race them. Every profile must equal the batch answer.

What a worker killed between the steps leaves, and its recovery:
`test_redis_cluster_spread_kill.py`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from attributes.erasure import erase_event
from attributes.profile import ProfileState
from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import ENTITY, BatchProcessor, BatchReport, ListDeadLetters, Record
from streams.spread_worker import spread_outbox
from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible, command
from tests.integration.stitching_support import comparable, event, person_oracle
from tests.integration.test_redis_cluster import RULES, oracle_settings, person_event
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
from traitflow import spread_claims as claims
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_outbox import SpreadOutbox
from traitflow.spread_rounds import FULL_ROUND_S
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import Expected, Outgoing, ProfileWrite

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]

#: buckets of the tests' layout: enough that a batch spans every node
BUCKETS = 32


@pytest.fixture
def prefix() -> str:
    return f"tfs-{uuid.uuid4().hex[:8]}"


def spread_store(cluster: LocalCluster, prefix: str, **options: Any) -> SpreadProfileStore:
    settings = Settings(
        redis_url=cluster.url,
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=BUCKETS,
        key_prefix=prefix,
    )
    return SpreadProfileStore.from_url(settings, settings.key_prefix, BUCKETS, **options)


@contextlib.asynccontextmanager
async def spread_workers(
    cluster: LocalCluster, prefix: str, count: int = 2
) -> AsyncIterator[list[Worker]]:
    rules = load_rules(RULES)
    stores = [HoldingStore(spread_store(cluster, prefix), max_profiles=100) for _ in range(count)]
    workers = [
        Worker(BatchProcessor(rules, store, ListDeadLetters(), trust=TRUST_ALL), store, partition)
        for partition, store in enumerate(stores)
    ]
    try:
        yield workers
    finally:
        for store in stores:
            await store.close()


def nodes_holding(cluster: LocalCluster, pattern: str) -> set[int]:
    """The indexes of the nodes with a key matching `pattern`."""
    holding = set()
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            if next(iter(client.scan_iter(pattern, count=1000)), None) is not None:
                holding.add(index)
        finally:
            client.close()
    return holding


def test_profiles_spread_over_every_node_and_equal_the_batch_answer(
    cluster: LocalCluster, prefix: str
) -> None:
    """Two workers commit rounds of events of the same people (their commits of a
    person conflict); the profiles end on every master, each equal to the batch answer,
    read by id and by user_id."""
    rng = random.Random(11)
    people = [f"u-{p}" for p in range(30)]
    everyone: dict[str, list[Any]] = {user: [] for user in people}

    async def go() -> tuple[list[bytes | None], list[bytes | None], int]:
        async with spread_workers(cluster, prefix) as (a, b):
            conflicts = 0
            for _ in range(6):
                batches: list[list[Any]] = [[], []]
                for user in people:
                    for batch in batches:
                        batch.append(person_event(rng, user, len(everyone[user])))
                        everyone[user].append(batch[-1])
                reports = await asyncio.gather(
                    a.processor.process(a.records(batches[0])),
                    b.processor.process(b.records(batches[1])),
                )
                conflicts += sum(r.conflicts for r in reports)
            by_user = await a.store.inner.read_views(ENTITY, [("user_id", u) for u in people])
            by_id = await b.store.inner.read_views(ENTITY, [("id", u) for u in people])
            return by_user, by_id, conflicts

    by_user, by_id, _ = asyncio.run(go())

    assert by_user == by_id
    settings = oracle_settings()
    for user, view in zip(people, by_user, strict=True):
        assert view is not None, user
        assert comparable(orjson.loads(view)) == person_oracle(settings, everyone[user], user)
    assert nodes_holding(cluster, "{" + prefix + ".b*}:s:*") == set(range(MASTERS))
    # every commit finalized: no claim, lock or intent is left
    assert nodes_holding(cluster, "{" + prefix + ".b*}:it:*") == set()


@pytest.mark.parametrize("commits", ORDERS)
def test_a_merge_across_slots_racing_events_loses_and_doubles_nothing(
    cluster: LocalCluster, prefix: str, commits: str
) -> None:
    """test_stitching's race on the spread layout: X (anonymous) merges into U while the
    other worker writes both; whichever commits second conflicts and is computed again.
    The pointers, in their own buckets, all end on U; X is deleted."""
    layout = SpreadLayout(prefix, BUCKETS)
    assert layout.profile_bucket(ENTITY, U) != layout.profile_bucket(ENTITY, X)

    async def go() -> tuple[Any, list[bytes | None]]:
        async with spread_workers(cluster, prefix) as (a, b):
            raced = await stitch_concurrently(a, b, commits == ORDERS[0])
            lookups = [("user_id", U), ("anonymous_id", A), ("email", EMAIL), ("id", U)]
            return raced, await a.store.inner.read_views(ENTITY, lookups)

    raced, views = asyncio.run(go())

    assert raced.held.conflicts >= 1
    assert views[0] is not None
    assert views.count(views[0]) == len(views), "identities serve different views"
    view = orjson.loads(views[0])
    assert comparable(view) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    assert view["version"] == len(EVERY_EVENT)
    keys = layout.keys(0)
    pointer = cluster.client(cluster.owner(_slot(keys.index(ENTITY, "anonymous_id", A))))
    gone = cluster.client(cluster.owner(_slot(keys.state(ENTITY, X))))
    try:
        assert pointer.get(keys.index(ENTITY, "anonymous_id", A)) == U.encode()
        assert command(gone, "EXISTS", keys.state(ENTITY, X), keys.version(ENTITY, X)) == 0
    finally:
        pointer.close()
        gone.close()


@pytest.mark.parametrize("commits", ["login-first", "crm-first"])
def test_a_new_identity_claimed_by_two_workers_ends_in_one_profile(
    cluster: LocalCluster, prefix: str, commits: str
) -> None:
    """Both workers see a new email; the claim of its pointer lets one through, the
    other conflicts and is computed again on top: one profile, never two."""
    login = event("in", 20, "identify", traits={"email": EMAIL}, userId=U, anonymousId=A)
    crm = event("crm", 10, "identify", traits={"email": EMAIL.upper(), "plan": "pro"})

    async def go() -> tuple[BatchReport, bytes | None]:
        async with spread_workers(cluster, prefix) as (a, b):
            batches = (a, a.records([login])), (b, b.records([crm]))
            _, report = await race(*(batches if commits == "login-first" else batches[::-1]))
            return report, await a.store.inner.read_view(ENTITY, "email", EMAIL)

    held, view = asyncio.run(go())

    assert held.conflicts == 1
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(oracle_settings(), [login, crm], U)


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def test_a_read_by_the_identity_a_profile_was_made_from_is_one_round_trip(
    cluster: LocalCluster, prefix: str
) -> None:
    """The API's reads on the spread layout: by id, or by the identity the profile was
    made from (its pointer is in the profile's slot), one round trip; by an identity
    linked later (its pointer is elsewhere), two. A claimed pointer reads as its old
    value."""

    async def go() -> dict[str, Any]:
        async with spread_workers(cluster, prefix) as (a, b):
            await stitch_concurrently(a, b, merge_first=True)
        store = spread_store(cluster, prefix)
        sent: list[int] = []
        run = store._run

        async def counted(calls: Any) -> list[Any]:
            sent.append(len(calls))
            return await run(calls)

        store._run = counted  # type: ignore[method-assign]
        seen: dict[str, Any] = {}
        try:
            for name, lookups in {
                "user_id": [("user_id", U)],
                "id": [("id", U)],
                "anonymous_id": [("anonymous_id", A)],
                "email": [("email", EMAIL)],
                "nobody": [("user_id", "u-nobody")],
                "all": [("user_id", U), ("email", EMAIL), ("id", U)],
            }.items():
                sent.clear()
                views = await store.read_views(ENTITY, lookups)
                profiles = await store.read_profiles(ENTITY, lookups)
                seen[name] = (views, [p and p[0] for p in profiles], len(sent) // 2)
            # a commit between its steps holds the pointer: read as the old value
            pointer = store.layout.keys(0).index(ENTITY, "user_id", U)
            held = claims.held_value(claims.CLAIMED, "c0", store.clock() + 60_000, 3)
            await store._run([("SET", pointer, held + U.encode())])
            sent.clear()
            seen["claimed"] = (await store.read_views(ENTITY, [("user_id", U)]), None, len(sent))
            await store._run([("SET", pointer, U)])
        finally:
            await store.close()
        return seen

    seen = asyncio.run(go())

    view = seen["id"][0][0]
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    rounds = {name: trips for name, (_, _, trips) in seen.items()}
    assert rounds == {
        "user_id": 1,
        "id": 1,
        "anonymous_id": 2,
        "email": 2,
        "nobody": 1,
        "all": 2,
        "claimed": 1,
    }
    for name, (views, profile_views, _) in seen.items():
        want = [None] if name == "nobody" else [view] * len(views)
        assert views == want, name
        assert profile_views in (None, want), name


def test_a_node_that_lost_the_scripts_is_given_them_again(
    cluster: LocalCluster, prefix: str
) -> None:
    """Scripts are sent by their SHA-1; a node without them (restarted, failed over,
    flushed here) answers NOSCRIPT, runs nothing, and is sent them again."""
    rng = random.Random(13)
    people = [f"u-{p}" for p in range(12)]
    everyone: dict[str, list[Any]] = {user: [] for user in people}

    async def go() -> list[bytes | None]:
        async with spread_workers(cluster, prefix, count=1) as (worker,):
            for round_ in range(2):
                batch = [person_event(rng, u, len(everyone[u])) for u in people]
                for user, made in zip(people, batch, strict=True):
                    everyone[user].append(made)
                if round_:
                    for index in range(MASTERS):
                        client = cluster.client(index)
                        try:
                            command(client, "SCRIPT", "FLUSH")
                        finally:
                            client.close()
                await worker.processor.process(worker.records(batch))
            return await worker.store.inner.read_views(ENTITY, [("user_id", u) for u in people])

    views = asyncio.run(go())

    for user, view in zip(people, views, strict=True):
        assert view is not None, user
        want = person_oracle(oracle_settings(), everyone[user], user)
        assert comparable(orjson.loads(view)) == want


#: each person's identities in the test below: (type, value with {} for the user)
IDENTITIES = [
    ("user_id", "{}"),
    ("email", "{}@example.com"),
    ("anonymous_id", "{}-phone"),
    ("anonymous_id", "{}-laptop"),
]


@pytest.mark.parametrize("seed", [23, 29, 31])
def test_three_workers_stitching_the_same_people_at_once_end_in_the_batch_answer(
    cluster: LocalCluster, prefix: str, seed: int
) -> None:
    """Each person browses anonymously on two devices, logs in on both and buys; every
    event goes to a worker at random and the three workers commit at the same moment,
    so their claims, locks and merges meet. Every identity of every person must serve the
    batch answer, and no claim, lock or intent is left."""
    rng = random.Random(seed)
    people = [f"p-{n}" for n in range(12)]
    everyone: dict[str, list[Any]] = {user: [] for user in people}

    def make(user: str, n: int, kind: str) -> Any:
        mid, ago = f"{user}-{n}", 600 - n / 10
        devices = {"a": f"{user}-phone", "b": f"{user}-laptop"}
        if kind in devices:
            return event(mid, ago, anonymousId=devices[kind])
        if kind.startswith("login-"):
            traits = {"email": f"{user}@example.com"}
            device = devices[kind[-1]]
            return event(mid, ago, "identify", traits=traits, userId=user, anonymousId=device)
        return person_event(rng, user, n) | {"messageId": mid}

    plan = ["a", "b", "a", "b", "login-a", "b", "login-b", "buy", "a", "buy"]

    async def go() -> tuple[list[list[bytes | None]], int]:
        async with spread_workers(cluster, prefix, count=3) as workers:
            conflicts = 0
            for kind in plan:
                batches: list[list[Any]] = [[] for _ in workers]
                for user in people:
                    made = make(user, len(everyone[user]), kind)
                    everyone[user].append(made)
                    batches[rng.randrange(len(workers))].append(made)
                reports = await asyncio.gather(
                    *(
                        w.processor.process(w.records(b))
                        for w, b in zip(workers, batches, strict=True)
                    )
                )
                conflicts += sum(r.conflicts for r in reports)
            reads = []
            for kind, value in IDENTITIES:
                lookups = [(kind, value.format(user)) for user in people]
                reads.append(await workers[0].store.inner.read_views(ENTITY, lookups))
            return reads, conflicts

    reads, conflicts = asyncio.run(go())

    assert conflicts > 0, "no commit met another's: nothing was raced"
    settings = oracle_settings()
    for n, user in enumerate(people):
        want = person_oracle(settings, everyone[user], user)
        for views in reads:
            view = views[n]
            assert view is not None, user
            assert comparable(orjson.loads(view)) == want, user
    assert nodes_holding(cluster, "{" + prefix + ".b*}:it:*") == set()


def test_profile_counts_summed_over_buckets_equal_one_stores_after_merges(
    cluster: LocalCluster, prefix: str
) -> None:
    """Anonymous-only profiles expire (their counts are kept apart, per bucket); logins
    merge them into users whose profiles are in other buckets. The counts summed over
    every bucket equal those of one in-memory store fed the same batches."""
    rules = load_rules(RULES)
    batches: list[list[Any]] = [
        [event(f"b-{n}", 30, anonymousId=f"dev-{n}") for n in range(16)],
        [
            event(
                f"l-{n}",
                20,
                "identify",
                traits={"email": f"c{n}@x.io"},
                userId=f"c-{n}",
                anonymousId=f"dev-{n}",
            )
            for n in range(10)
        ],
        [event(f"o-{n}", 10, userId=f"c-{n}") for n in range(0, 16, 3)],
    ]

    async def counted(store: Any) -> dict[str, int]:
        processor = BatchProcessor(
            rules, store, ListDeadLetters(), trust=TRUST_ALL, anonymous_ttl_ms=3_600_000
        )
        offset = 0
        for batch in batches:
            records = [
                Record("events", 0, offset + i, orjson.dumps(e), 0) for i, e in enumerate(batch)
            ]
            offset += len(records)
            await processor.process(records)
        counts: dict[str, int] = await store.profile_counts(ENTITY)
        return counts

    async def go() -> tuple[dict[str, int], dict[str, int]]:
        spread = spread_store(cluster, prefix)
        try:
            return await counted(spread), await counted(MemoryProfileStore())
        finally:
            await spread.close()

    on_cluster, in_memory = asyncio.run(go())

    assert on_cluster == in_memory
    # ten devices merged into their users, six still anonymous, two users new with orders
    assert in_memory["profile"] == 18


def test_an_erasure_deletes_every_key_across_slots_and_a_replay_stays_erased(
    cluster: LocalCluster, prefix: str
) -> None:
    """An erase by email of a person whose pointers are in several buckets: the profile
    goes in its bucket's script, the pointers, tombstones and the request's status by
    the intent. Every identity then reads nothing, the status says applied, and the
    person's events given again (a replay) bring nothing back."""
    user, device, email = "e-1", "e-dev", "e1@example.com"
    person = [
        event("e1", 30, anonymousId=device),
        event("e2", 20, "identify", traits={"email": email}, userId=user, anonymousId=device),
        event("e3", 10, userId=user),
    ]
    erase = erase_event(ENTITY, "email", email, "req-e1")
    lookups = [("user_id", user), ("anonymous_id", device), ("email", email), ("id", user)]

    async def go() -> tuple[list[bytes | None], list[bytes | None], bytes | None, int]:
        async with spread_workers(cluster, prefix, count=1) as (worker,):
            await worker.processor.process(worker.records(person))
            before = await worker.store.inner.read_views(ENTITY, lookups)
            await worker.processor.process(worker.records([erase]))
        async with spread_workers(cluster, prefix, count=1) as (replayed,):
            replayed.offset = 0  # the topic replayed from its start
            await replayed.processor.process(replayed.records([*person, erase]))
            store = replayed.store.inner
            assert isinstance(store, SpreadProfileStore)
            after = await store.read_views(ENTITY, lookups)
            status = await store.erasure_status("req-e1")
            identities = [("user_id", user), ("anonymous_id", device), ("email", email)]
            tombstones = len(await store.tombstones(ENTITY, identities))
        return before, after, status, tombstones

    before, after, status, tombstones = asyncio.run(go())

    assert None not in before
    assert after == [None] * len(lookups)
    assert status is not None
    assert orjson.loads(status)["status"] == "applied"
    assert tombstones == 3
    assert nodes_holding(cluster, "{" + prefix + ".b*}:[svni]:*") == set()


def test_expiry_indexes_and_outboxes_are_read_over_every_bucket(
    cluster: LocalCluster, prefix: str
) -> None:
    """`due` takes the earliest due of every bucket's expiry index; the outbox relay's
    `pending` a prefix of every bucket's stream (a profile's messages in their order;
    different profiles' by their entry's time, the same millisecond on two nodes in no
    promised order), and `remove` deletes what it names from the right bucket."""
    store = spread_store(cluster, prefix)
    layout = store.layout
    source = "events/0"
    profiles = [f"d-{n}" for n in range(12)]

    async def go() -> tuple[list[str], list[bytes], list[bytes], int]:
        try:
            await store._run(
                [
                    ("ZADD", layout.of_profile(ENTITY, pid).expiries(ENTITY, source), 1000 + n, pid)
                    for n, pid in enumerate(profiles)
                ]
            )
            due = await store.due(ENTITY, source, now=1005, limit=4)
            for pid in profiles:  # one at a time: commit order
                stream = layout.of_profile(ENTITY, pid).outbox(source)
                await store._run([("XADD", stream, "*", "topic", "t", "key", pid)])
            outbox = SpreadOutbox(store.client, layout, store.outbox_rounds)
            first = await outbox.pending(source, 5)
            await outbox.remove(source, [entry for entry, _ in first])
            rest = await outbox.pending(source, 100)
            left = await outbox.size([source])
            return due, [m.key for _, m in first], [m.key for _, m in rest], left
        finally:
            await store.close()

    due, first, rest, left = asyncio.run(go())

    assert len({layout.profile_bucket(ENTITY, pid) for pid in profiles}) > 3
    assert due == profiles[:4]
    assert len(first) == 5
    assert sorted(first + rest) == sorted(pid.encode() for pid in profiles)
    assert left == len(profiles) - 5
    for bucket in {layout.profile_bucket(ENTITY, pid) for pid in profiles}:
        mine = [pid.encode() for pid in profiles if layout.profile_bucket(ENTITY, pid) == bucket]
        taken = [key for key in first if key in mine]
        assert taken == mine[: len(taken)], "a bucket's messages were taken out of order"


def _calls(cluster: LocalCluster, name: str) -> int:
    """Calls of command `name` run on the masters so far (scripts' included)."""
    total = 0
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        total += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    return total


def _new_profile(pid: str, source: str, **fields: Any) -> ProfileWrite:
    state = ProfileState(id=pid, version=1, identities={"user_id": [pid]})
    return ProfileWrite(state, b"state", b"view", source=source, **fields)


def test_the_relay_reads_the_buckets_its_worker_wrote_and_every_one_each_full_round(
    cluster: LocalCluster, prefix: str
) -> None:
    """A round reads only the buckets the worker's own commits wrote to (an idle round
    runs no XRANGE at all), and every bucket again after `FULL_ROUND_S`: a message
    another process put there (a backfill's render) is relayed then."""
    store = spread_store(cluster, prefix)
    outbox = spread_outbox(store)
    clock = [1000.0]
    store.outbox_rounds.clock = lambda: clock[0]
    layout, source = store.layout, "events/0"
    people = [f"o-{n}" for n in range(3)]
    writes = [
        _new_profile(pid, source, outgoing=[Outgoing("changes", pid.encode(), b"v1")])
        for pid in people
    ]

    async def go() -> tuple[list[int], list[bytes], list[bytes], list[bytes]]:
        try:
            ran = []
            assert await outbox.pending(source, 100) == []  # the first round: every bucket
            ran.append(_calls(cluster, "xrange"))
            assert await outbox.pending(source, 100) == []
            ran.append(_calls(cluster, "xrange"))
            await store.commit(ENTITY, writes, expected=Expected(versions=dict.fromkeys(people)))
            mine = await outbox.pending(source, 100)
            ran.append(_calls(cluster, "xrange"))
            await outbox.remove(source, [entry for entry, _ in mine])
            stream = layout.of_profile(ENTITY, "elsewhere").outbox(source)
            await store._run([("XADD", stream, "*", "topic", "t", "key", "elsewhere")])
            before = await outbox.pending(source, 100)
            clock[0] += FULL_ROUND_S
            after = await outbox.pending(source, 100)
            keys = [[m.key for _, m in found] for found in (mine, before, after)]
            return ran, keys[0], keys[1], keys[2]
        finally:
            await store.close()

    ran, mine, before, after = asyncio.run(go())

    written = {layout.profile_bucket(ENTITY, pid) for pid in people}
    assert ran[0] >= BUCKETS
    assert ran[1] == ran[0], "an idle round read streams"
    assert ran[2] - ran[1] == len(written)
    assert sorted(mine) == sorted(pid.encode() for pid in people)
    assert before == []
    assert after == [b"elsewhere"]


def test_expiry_rounds_read_the_buckets_whose_earliest_is_due_and_every_one_each_full_round(
    cluster: LocalCluster, prefix: str
) -> None:
    """`due` reads only the buckets whose earliest expiry (noted by the worker's own
    commits, or found in the index) has come: none while nothing is due; every bucket
    again after `FULL_ROUND_S`, for an expiry another process indexed."""
    store = spread_store(cluster, prefix)
    clock = [1000.0]
    store.expiry_rounds.clock = lambda: clock[0]
    layout, source = store.layout, "events/0"
    writes = [_new_profile("e-0", source, expiry=(source, 5000))]
    writes.append(_new_profile("e-1", source, expiry=(source, 8000)))
    ids = ["e-0", "e-1"]

    async def go() -> tuple[list[int], list[list[str]]]:
        try:
            ran, due = [_calls(cluster, "zrange")], []
            for now in (0, 100):  # the first round reads every bucket, the next none
                due.append(await store.due(ENTITY, source, now=now, limit=10))
                ran.append(_calls(cluster, "zrange"))
            await store.commit(ENTITY, writes, expected=Expected(versions=dict.fromkeys(ids)))
            for now in (4999, 5000):
                due.append(await store.due(ENTITY, source, now=now, limit=10))
                ran.append(_calls(cluster, "zrange"))
            index = layout.of_profile(ENTITY, "elsewhere").expiries(ENTITY, source)
            await store._run([("ZADD", index, 6000, "elsewhere")])
            due.append(await store.due(ENTITY, source, now=9000, limit=10))
            clock[0] += FULL_ROUND_S
            due.append(await store.due(ENTITY, source, now=9000, limit=10))
            return ran, due
        finally:
            await store.close()

    ran, due = asyncio.run(go())

    assert ran[1] - ran[0] == 2 * BUCKETS, "the first round: every index, due and earliest"
    assert ran[2] == ran[1], "an idle round read indexes"
    assert ran[3] == ran[2], "a round read an index with nothing due"
    assert ran[4] - ran[3] == 1, "the due bucket's read"
    assert due[:3] == [[], [], []]
    assert due[3] == ["e-0"]
    assert due[4] == ["e-0", "e-1"]
    assert due[5] == ["e-0", "elsewhere", "e-1"]
