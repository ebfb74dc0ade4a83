"""The API's reads on the spread layout (docs/redis-cluster.md, option B) on the local
3-master cluster: a read by an identity linked later (an email, a merged anonymous id)
is one round trip once the API has cached its pointer (`traitflow.spread_pointers`); a
cached pointer made stale by a merge (finished or in flight), an erasure or an
anonymous profile's expiry never serves another profile than the uncached read would;
and a real `traitflow api` charges a throttled key's refused requests without reading
a profile (`api.headroom`), counted by the nodes' `INFO commandstats`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.keys import RedisKeyStore
from api.spread_store import ChargedSpreadStore
from attributes.erasure import erase_event
from attributes.identities import DEFAULT_USER, EntitySpec, IdentityRules, IdentitySpec
from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import ENTITY, BatchProcessor, ListDeadLetters
from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible
from tests.integration.conftest import create_key
from tests.integration.stitching_support import comparable, event, order, person_oracle
from tests.integration.test_redis_cluster import RULES, oracle_settings
from tests.integration.test_redis_cluster_spread import BUCKETS, spread_store, spread_workers
from tests.integration.test_redis_cluster_spread_worker import spread_settings
from tests.integration.test_stitching import (
    EMAIL,
    EVERY_EVENT,
    HoldingStore,
    U,
    Worker,
    stitch_concurrently,
)
from tests.integration.test_stitching import A as DEVICE
from tests.integration.workers import running_api
from traitflow import spread_claims as claims
from traitflow.config import Settings
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_store import SpreadProfileStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


@pytest.fixture
def prefix() -> str:
    return f"tfr-{uuid.uuid4().hex[:8]}"


class Rounds:
    """A store's round trips (`_run` calls: each one pipeline over the nodes)."""

    def __init__(self, store: SpreadProfileStore) -> None:
        self.count = 0
        run = store._run

        async def counted(calls: Any) -> list[Any]:
            self.count += 1
            return await run(calls)

        store._run = counted  # type: ignore[method-assign]

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def cached_store(cluster: LocalCluster, prefix: str) -> ChargedSpreadStore:
    """The API's store (its pointer cache), read without a request's charge."""
    settings = Settings(
        redis_url=cluster.url,
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=BUCKETS,
        key_prefix=prefix,
    )
    store = ChargedSpreadStore.from_url(settings, prefix, BUCKETS)
    assert isinstance(store, ChargedSpreadStore)
    return store


def node_calls(cluster: LocalCluster) -> dict[str, int]:
    """Commands every master ran since `reset_calls`, summed, by name (scripts' own
    included), without the INFO that asks."""
    counted: dict[str, int] = {}
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            for name, entry in client.info("commandstats").items():
                name = name.removeprefix("cmdstat_")
                counted[name] = counted.get(name, 0) + int(entry["calls"])
        finally:
            client.close()
    # the counting clients' own and the cluster clients' topology questions
    for ignored in ("info", "config|resetstat", "hello", "cluster|slots", "cluster|nodes"):
        counted.pop(ignored, None)
    return {name: calls for name, calls in counted.items() if calls}


def reset_calls(cluster: LocalCluster) -> None:
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            client.config_resetstat()
        finally:
            client.close()


def test_reads_by_linked_identities_are_one_round_trip_once_cached(
    cluster: LocalCluster, prefix: str
) -> None:
    """By email or by the merged anonymous id: two round trips the first time (the
    pointer, then the profile), one MGET on one node after; by id and by user_id one,
    as before. Every answer equals the uncached store's."""
    lookups = {
        "email": [("email", EMAIL)],
        "anonymous_id": [("anonymous_id", DEVICE)],
        "user_id": [("user_id", U)],
        "id": [("id", U)],
        "all": [("user_id", U), ("email", EMAIL), ("anonymous_id", DEVICE), ("id", U)],
    }

    async def go() -> tuple[dict[str, Any], dict[str, int]]:
        async with spread_workers(cluster, prefix) as (a, b):
            await stitch_concurrently(a, b, merge_first=True)
        plain, store = spread_store(cluster, prefix), cached_store(cluster, prefix)
        rounds = Rounds(store)
        seen: dict[str, Any] = {}
        try:
            for name, asked in lookups.items():
                want = await plain.read_views(ENTITY, asked)
                first = await store.read_views(ENTITY, asked), rounds.take()
                again = await store.read_views(ENTITY, asked), rounds.take()
                records = (
                    await store.read_records(ENTITY, asked, collection="users", stamp="none"),
                    rounds.take(),
                )
                profiles = await store.read_profiles(ENTITY, asked), rounds.take()
                seen[name] = (want, first, again, records, profiles)
            reset_calls(cluster)
            await store.read_views(ENTITY, [("email", EMAIL)])
            calls = node_calls(cluster)
        finally:
            await plain.close()
            await store.close()
        return seen, calls

    seen, calls = asyncio.run(go())

    view = seen["id"][0][0]
    assert view is not None
    assert comparable(orjson.loads(view)) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    trips = {name: (f[1], a[1], r[1], p[1]) for name, (_, f, a, r, p) in seen.items()}
    assert trips == {
        "email": (2, 1, 1, 1),
        "anonymous_id": (2, 1, 1, 1),
        "user_id": (1, 1, 1, 1),
        "id": (1, 1, 1, 1),
        "all": (1, 1, 1, 1),  # every linked identity cached by then
    }
    for name, (want, first, again, records, profiles) in seen.items():
        assert first[0] == again[0] == want == [view] * len(want), name
        assert [r and r[1] for r in records[0]] == want, name
        assert [p and p[0] for p in profiles[0]] == want, name
    # a cached read: one MGET on the profile's node, nothing else
    assert calls == {"mget": 1}, calls


def test_a_cached_pointer_made_stale_by_a_merge_serves_the_survivor(
    cluster: LocalCluster, prefix: str
) -> None:
    """A device identifies with an email first: profile P, made from the email, holds
    the device's anonymous id, cached so. Mid-merge into the user's profile U (the
    pointer already moved to U by finalize, P locked and not dropped yet) the read must
    serve what the pointer names, U; after the merge, U again."""
    layout = SpreadLayout(prefix, BUCKETS)
    email = "stale@example.com"
    made = f"email:{email}"
    assert layout.identity_bucket(ENTITY, "anonymous_id", DEVICE) != layout.profile_bucket(
        ENTITY, made
    )
    linked = event("e1", 50, "identify", traits={"email": email}, anonymousId=DEVICE)
    user = [order("u1", 40, 12.0, "sku-1", userId=U)]
    login = event("in", 30, "identify", userId=U, anonymousId=DEVICE)

    async def go() -> list[Any]:
        store, plain = cached_store(cluster, prefix), spread_store(cluster, prefix)
        keys = layout.keys(0)
        pointer, version = keys.index(ENTITY, "anonymous_id", DEVICE), keys.version(ENTITY, made)
        try:
            async with spread_workers(cluster, prefix, count=1) as (worker,):
                await worker.processor.process(worker.records([linked, *user]))
                before = await store.read_view(ENTITY, "anonymous_id", DEVICE)
                assert store.pointers is not None
                assert store.pointers.get(ENTITY, "anonymous_id", DEVICE) == made
                # finalize half done: the pointer moved, P still there, locked
                (old,) = await store._run([("GET", version)])
                held = claims.held_value(claims.LOCKED, "c9", store.clock() + 60_000, 1)
                await store._run([("SET", pointer, U), ("SET", version, held + old)])
                midway = await store.read_view(ENTITY, "anonymous_id", DEVICE)
                uncached = await plain.read_view(ENTITY, "anonymous_id", DEVICE)
                await store._run([("SET", pointer, made), ("SET", version, old)])
                again = await store.read_view(ENTITY, "anonymous_id", DEVICE)  # cached: P
                await worker.processor.process(worker.records([login]))
            after = await store.read_view(ENTITY, "anonymous_id", DEVICE)
            survivor = await plain.read_view(ENTITY, "id", U)
            return [before, midway, uncached, again, after, survivor]
        finally:
            await store.close()
            await plain.close()

    before, midway, uncached, again, after, survivor = asyncio.run(go())

    assert before is not None
    assert orjson.loads(before)["id"] == made
    assert uncached is not None
    assert orjson.loads(uncached)["id"] == U
    assert midway == uncached
    assert again == before
    assert survivor is not None
    assert after == survivor
    assert orjson.loads(survivor)["identities"]["email"] == [email]


def test_a_cached_pointer_made_stale_by_an_erasure_serves_nothing_then_the_new_owner(
    cluster: LocalCluster, prefix: str
) -> None:
    """A device identifies with an email: profile P, made from the email, holds the
    device's anonymous id, cached so. P is erased (by its email): the read by the device
    serves nothing. The device then logs in as another person: the read serves that
    person."""
    email = "gone@example.com"
    other = "u-after"
    first = [event("e1", 50, "identify", traits={"email": email}, anonymousId=DEVICE)]
    later = [event("e2", 20, "identify", userId=other, anonymousId=DEVICE)]

    async def go() -> list[bytes | None]:
        store = cached_store(cluster, prefix)
        try:
            async with spread_workers(cluster, prefix, count=1) as (worker,):
                await worker.processor.process(worker.records(first))
                before = await store.read_view(ENTITY, "anonymous_id", DEVICE)
                erase = erase_event(ENTITY, "email", email, "req-1")
                await worker.processor.process(worker.records([erase]))
                erased = await store.read_view(ENTITY, "anonymous_id", DEVICE)
                await worker.processor.process(worker.records(later))
            return [before, erased, await store.read_view(ENTITY, "anonymous_id", DEVICE)]
        finally:
            await store.close()

    before, erased, after = asyncio.run(go())

    assert before is not None
    assert orjson.loads(before)["id"] == f"email:{email}"
    assert erased is None
    assert after is not None
    assert orjson.loads(after)["id"] == other


#: the default user entity with a second anonymous type: a device id, so that an
#: anonymous-only (expiring) profile holds an identity it was not made from
DEVICES = EntitySpec(
    identities=[
        *DEFAULT_USER.identities,
        IdentitySpec(type="device_id", paths=["context.device.id"], limit=1000),
    ],
)
ANONYMOUS = ("anonymous_id", "device_id")
LIFETIME_MS = 1_000


def test_a_cached_pointer_made_stale_by_an_expiry_serves_the_new_profile(
    cluster: LocalCluster, prefix: str
) -> None:
    """An anonymous profile P (made from anonymous id a) holds device d, cached so. P
    and its pointers expire; a new P is made from a alone, and d makes a profile of its
    own: the read by d serves that one, not the new P (which exists, without d)."""
    layout = SpreadLayout(prefix, BUCKETS)
    anonymous, device = "a-exp", "d-exp"
    made = f"anonymous_id:{anonymous}"
    assert layout.identity_bucket(ENTITY, "device_id", device) != layout.profile_bucket(
        ENTITY, made
    )

    def processed(store: Any) -> Worker:
        processor = BatchProcessor(
            load_rules(RULES),
            store,
            ListDeadLetters(),
            trust=TRUST_ALL,
            identities=IdentityRules(DEVICES),
            anonymous_ttl_ms=LIFETIME_MS,
            anonymous_types=ANONYMOUS,
        )
        return Worker(processor, store, 0)

    both = event("b1", 50, anonymousId=anonymous, context={"device": {"id": device}})
    alone = event("b2", 40, anonymousId=anonymous)
    device_only = event("b3", 30, context={"device": {"id": device}})

    async def go() -> list[bytes | None]:
        store, plain = cached_store(cluster, prefix), spread_store(cluster, prefix)
        try:
            first = processed(HoldingStore(spread_store(cluster, prefix), max_profiles=10))
            await first.processor.process(first.records([both]))
            await first.store.close()
            before = await store.read_view(ENTITY, "device_id", device)
            deadline = time.monotonic() + 30
            while await plain.read_views(ENTITY, [("id", made), ("device_id", device)]) != [
                None,
                None,
            ]:
                assert time.monotonic() < deadline, "the anonymous profile did not expire"
                await asyncio.sleep(0.1)
            second = processed(HoldingStore(spread_store(cluster, prefix), max_profiles=10))
            second.offset = 1
            await second.processor.process(second.records([alone]))
            await second.processor.process(second.records([device_only]))
            await second.store.close()
            return [
                before,
                await store.read_view(ENTITY, "device_id", device),
                await plain.read_view(ENTITY, "device_id", device),
                await plain.read_view(ENTITY, "id", made),
            ]
        finally:
            await store.close()
            await plain.close()

    before, cached, uncached, new_made = asyncio.run(go())

    assert before is not None
    assert orjson.loads(before)["id"] == made
    assert new_made is not None
    assert "device_id" not in orjson.loads(new_made)["identities"]
    assert uncached is not None
    assert orjson.loads(uncached)["id"] == f"device_id:{device}"
    assert cached == uncached


def test_a_charge_says_the_tokens_its_key_has_left(cluster: LocalCluster, prefix: str) -> None:
    """What `api.headroom` decides by: the charge script's tokens left after each
    charge (a burst of 4, refilled a token per thousand seconds), then a refusal that
    takes none."""
    settings = Settings(redis_url=cluster.url, redis_cluster=True, key_prefix=prefix)

    async def go() -> list[tuple[float, float | None]]:
        keys = RedisKeyStore.from_url(settings, settings.key_prefix)
        try:
            return [await keys.charge_left("k1", 0.001, 4) for _ in range(5)]
        finally:
            await keys.close()

    answers = asyncio.run(go())

    assert [wait == 0 for wait, _ in answers] == [True] * 4 + [False]
    left = [tokens for _, tokens in answers]
    for want, tokens in zip([3, 2, 1, 0, 0], left, strict=True):
        assert tokens is not None
        assert want <= tokens < want + 0.01


@pytest.fixture
def spread_api(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> Iterator[tuple[str, Settings]]:
    """A real `traitflow api` on the spread layout (key records cached for the test's
    length, so that only charges and reads reach Redis)."""
    own = spread_settings(
        settings, f"tfa-{uuid.uuid4().hex[:6]}", cluster, tmp_path, api_key_cache_s=600.0
    )
    with running_api(own, "api") as base:
        yield base, own


def test_a_real_api_serves_the_batch_answer_and_a_throttled_key_reads_no_profile(
    spread_api: tuple[str, Settings], cluster: LocalCluster
) -> None:
    """A person browses, logs in (email, merge across slots) and buys; a real API on
    the spread layout serves the batch answer by every identity, a read by email with
    one charge and one MGET once cached; and a key past its limit is refused without
    any profile read: the nodes ran its charge alone."""
    base, own = spread_api
    user, device, email = "ra-1", "ra-dev", "ra-1@example.com"
    events = [
        event("r1", 50, anonymousId=device),
        event("r2", 40, "identify", traits={"email": email}, userId=user, anonymousId=device),
        order("r3", 30, 20.0, "sku-9", userId=user),
    ]

    async def write() -> None:
        inner = SpreadProfileStore.from_url(own, own.key_prefix, BUCKETS)
        store = HoldingStore(inner, max_profiles=10)
        rules = load_rules(own.rules_path)
        processor = BatchProcessor(rules, store, ListDeadLetters(), trust=TRUST_ALL)
        worker = Worker(processor, store, 0)
        try:
            await worker.processor.process(worker.records(events))
        finally:
            await inner.close()

    asyncio.run(write())
    want = person_oracle(own, events, user)
    reader = create_key(own, "reader", collections=["users"], rate_per_s=1e5, burst=100_000)
    throttled = create_key(own, "throttled", collections=["users"], rate_per_s=0.001, burst=4)
    by_email = f"/v1/collections/users/records/email/{email}"

    with httpx.Client(base_url=base, timeout=10) as http:

        def get(path: str, token: str) -> httpx.Response:
            return http.get(path, headers={"Authorization": f"Bearer {token}"})

        for kind, value in (("user_id", user), ("anonymous_id", device), ("email", email)):
            for _ in range(2):  # the second by a cached pointer
                answer = get(f"/v1/collections/users/records/{kind}/{value}", reader)
                assert answer.status_code == 200, (kind, answer.text)
                assert comparable(answer.json()) == want, kind
        reset_calls(cluster)
        for _ in range(5):
            assert get(by_email, reader).status_code == 200
        allowed = node_calls(cluster)

        statuses = [get(by_email, throttled).status_code for _ in range(5)]
        assert statuses == [200] * 4 + [429]  # four tokens
        reset_calls(cluster)
        refused = [get(by_email, throttled) for _ in range(50)]
        calls = node_calls(cluster)

    # the reader's key has headroom: its charge and the cached read went together
    assert allowed == {"evalsha": 5, "mget": 5, "time": 5, "hmget": 5, "hset": 5, "pexpire": 5}
    assert {r.status_code for r in refused} == {429}
    assert refused[0].json() == {"error": "rate limit exceeded for this API key"}
    # each refused request: its charge (a script: TIME, HMGET, HSET, PEXPIRE), no read
    assert calls == {"evalsha": 50, "time": 50, "hmget": 50, "hset": 50, "pexpire": 50}, calls
