"""A real `traitflow worker` and `traitflow api` on the local Redis Cluster with
TRAITFLOW_REDIS_LAYOUT=spread: people browse anonymously, log in (a merge of the
anonymous profile into the user's, across slots), then keep buying; every identity of
every person must serve the batch answer, and the outbox relay must empty every
bucket's copy of the outboxes: each profile's last change on the profile changes topic
is its final version."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.cluster import RedisCluster

from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.reshard_support import PublishedRounds
from tests.integration.stitching_support import comparable, event, person_oracle
from tests.integration.test_redis_cluster import person_event
from tests.integration.test_worker_kills import kill9
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_store import SpreadProfileStore
from traitflow.topics import ensure_topics, read_topic

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]

BUCKETS = 32


def spread_settings(
    settings: Settings, name: str, cluster: LocalCluster, tmp_path: Path, **more: Any
) -> Settings:
    """`settings` isolated as `name`, on the spread layout of `cluster`."""
    return settings.isolated(
        name,
        redis_url=cluster.url,
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=BUCKETS,
        home=tmp_path,
        **more,
    )


def test_a_worker_and_the_api_on_the_spread_layout_serve_the_batch_answer(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"tfs-{uuid.uuid4().hex[:6]}"
    own = spread_settings(
        settings, name, cluster, tmp_path, profile_changes_topic=f"{name}-changes"
    )
    assert own.profile_changes_topic is not None
    asyncio.run(ensure_topics(own))
    publish = Publisher(own, next(iter(own.sources)))
    rng = random.Random(5)
    people = [f"su-{p}" for p in range(20)]
    everyone: dict[str, list[Any]] = {u: [] for u in people}

    def anonymous(user: str) -> str:
        return f"anon-{user}"

    def send(make: Any) -> None:
        batch = []
        for user in people:
            everyone[user].append(make(user, len(everyone[user])))
            batch.append(everyone[user][-1])
        publish(batch)

    def browse(user: str, n: int) -> Any:
        return event(f"{user}-{n}", 600 - n / 10, anonymousId=anonymous(user))

    def login(user: str, n: int) -> Any:
        traits = {"email": f"{user}@example.com"}
        return event(
            f"{user}-{n}", 600 - n / 10, "identify", traits=traits, userId=user,
            anonymousId=anonymous(user),
        )  # fmt: skip

    worker = start_worker(own, "worker")
    closing: list[httpx.Client] = []
    try:
        for make in (browse, browse, login, *[lambda u, n: person_event(rng, u, n)] * 3):
            send(make)
        token = create_key(own, "spread-admin", admin=True, rate_per_s=1e5, burst=100_000)
        with running_api(own, "api") as base:
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
            closing.append(http)

            def served(kind: str, value: str) -> Any:
                r = http.get(f"/v1/collections/users/records/{kind}/{value}")
                return r.status_code, r.json()

            total = {u: len(e) for u, e in everyone.items()}

            def done() -> bool:
                assert alive(worker), "the worker stopped"
                return all(served("user_id", u)[1].get("version") == total[u] for u in people)

            wait_until(done, timeout=120, what="every event applied")
            for user in people:
                want = person_oracle(own, everyone[user], user)
                for kind, value in (
                    ("user_id", user),
                    ("anonymous_id", anonymous(user)),
                    ("email", f"{user}@example.com"),
                ):
                    status, view = served(kind, value)
                    assert status == 200, (kind, value)
                    assert comparable(view) == want, (kind, value)
        layout = SpreadLayout.of(own.key_prefix, BUCKETS)
        outboxes = [layout.keys(b).outbox(f"{t}/{p}") for b in range(BUCKETS) for t in own.sources
                    for p in range(own.topic_partitions)]  # fmt: skip
        client = RedisCluster.from_url(cluster.url)
        try:

            def relayed() -> bool:
                return sum(client.xlen(key) for key in outboxes) == 0

            wait_until(relayed, timeout=30, what="every bucket's outbox relayed")
        finally:
            client.close()
        last: dict[bytes, int] = {}
        for message in asyncio.run(read_topic(own, own.profile_changes_topic)):
            if message.value is not None:
                version = orjson.loads(message.value)["version"]
                last[message.key] = max(last.get(message.key, 0), version)
        assert {u: last.get(u.encode()) for u in people} == total
    finally:
        for c in closing:
            c.close()
        worker.stop()


def test_a_spread_worker_killed_mid_stream_twice_ends_in_the_batch_answer(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """`traitflow worker` on the spread layout, SIGKILLed twice while it commits waves
    of logins (merges across slots) and orders, and started again: the new one finishes
    what the dead one left (intents when given its partitions, claims and locks when it
    meets them) and reads its batches again. Every identity serves the batch answer."""
    own = spread_settings(settings, f"tfk-{uuid.uuid4().hex[:6]}", cluster, tmp_path)
    asyncio.run(ensure_topics(own))
    publish = Publisher(own, next(iter(own.sources)))
    rng = random.Random(9)
    people = [f"ku-{p}" for p in range(150)]
    everyone: dict[str, list[Any]] = {u: [] for u in people}

    def wave(kind: str) -> None:
        batch = []
        for user in people:
            n = len(everyone[user])
            mid, ago, device = f"{user}-{n}", 600 - n / 10, f"anon-{user}-{n // 6}"
            if kind == "browse":
                made = event(mid, ago, anonymousId=device)
            elif kind == "login":
                traits = {"email": f"{user}@example.com"}
                made = event(mid, ago, "identify", traits=traits, userId=user, anonymousId=device)
            else:
                made = person_event(rng, user, n) | {"messageId": mid}
            everyone[user].append(made)
            batch.append(made)
        publish(batch)

    def read(lookups: list[tuple[str, str]]) -> list[bytes | None]:
        async def go() -> list[bytes | None]:
            store = SpreadProfileStore.from_url(own, own.key_prefix, BUCKETS)
            try:
                return await store.read_views("user", lookups)
            finally:
                await store.close()

        return asyncio.run(go())

    def started(versions: dict[str, int]) -> bool:
        """Whether the worker has written some of what was sent since `versions`."""
        views = read([("user_id", u) for u in people])
        return any(
            v is not None and orjson.loads(v)["version"] > versions.get(u, 0)
            for u, v in zip(people, views, strict=True)
        )

    worker = start_worker(own, "worker-0")
    try:
        for kill in range(2):
            before = {u: len(e) for u, e in everyone.items()}
            for kind in ("browse", "login", "buy", "buy", "browse", "login"):
                wave(kind)
            wait_until(partial(started, before), timeout=60, what="the worker's first writes")
            time.sleep(rng.uniform(0, 0.2))
            kill9(worker)
            worker = start_worker(own, f"worker-{kill + 1}")
        wave("buy")
        total = {u: len(e) for u, e in everyone.items()}

        def done() -> bool:
            assert alive(worker), "the worker stopped"
            views = read([("user_id", u) for u in people])
            return all(
                v is not None and orjson.loads(v)["version"] == total[u]
                for u, v in zip(people, views, strict=True)
            )

        wait_until(done, timeout=180, what="every event applied after the kills")
        for user in people:
            want = person_oracle(own, everyone[user], user)
            lookups = [("user_id", user), ("email", f"{user}@example.com")]
            lookups += [("anonymous_id", f"anon-{user}-{d}") for d in range(2)]
            for lookup, view in zip(lookups, read(lookups), strict=True):
                assert view is not None, lookup
                assert comparable(orjson.loads(view)) == want, lookup
    finally:
        worker.stop()


def test_a_worker_and_the_api_on_the_spread_layout_across_a_reshard(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """Events of people in one bucket flow before, during and after `redis-cli
    --cluster reshard` moves that bucket's slot, keys and all; the API serves them
    throughout (a read that meets the move waits, then follows it) and ends on the
    batch answer."""
    firsts = {cluster.first_slot(index) for index in range(MASTERS)}
    run = uuid.uuid4().hex[:6]
    name, bucket = next(
        (name, b)
        for n in range(1_000_000)
        for b in range(BUCKETS)
        if SpreadLayout(name := f"tfm-{run}-{n}", BUCKETS).slot(b) in firsts
    )
    own = spread_settings(settings, name, cluster, tmp_path)
    layout = SpreadLayout.of(own.key_prefix, BUCKETS)
    slot = layout.slot(bucket)
    asyncio.run(ensure_topics(own))
    publish = Publisher(own, next(iter(own.sources)))
    people = [u for n in range(5000) if layout.profile_bucket("user", u := f"mu-{n}") == bucket]
    people = people[:15]
    rounds = PublishedRounds(people, random.Random(21), person_event, publish)
    everyone, send = rounds.everyone, rounds.send

    worker = start_worker(own, "worker")
    closing: list[httpx.Client] = []
    try:
        send(3)
        token = create_key(own, "spread-admin", admin=True, rate_per_s=1e5, burst=100_000)
        with running_api(own, "api") as base:
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
            closing.append(http)

            def served(user: str) -> Any:
                r = http.get(f"/v1/collections/users/records/user_id/{user}")
                return r.status_code, r.json()

            wait_until(lambda: served(people[0])[0] == 200, timeout=90, what="a first profile")
            node = cluster.client(cluster.owner(slot))
            try:  # filler keys: the move lasts long enough for events to meet it
                for start in range(0, 20_000, 1000):
                    node.mset(
                        {f"{layout.tag(bucket)}:filler:{n}": n for n in range(start, start + 1000)}
                    )
            finally:
                node.close()
            target = (cluster.owner(slot) + 1) % MASTERS
            mover = threading.Thread(
                target=cluster.move_slot, args=(slot, target), kwargs={"pipeline": 2}
            )
            mover.start()
            during = 0
            while mover.is_alive():
                send(1)
                during += 1
                assert served(people[0])[0] in (200, 503)
                time.sleep(0.2)
            mover.join()
            assert cluster.owner(slot) == target
            assert during >= 1, "no events were sent while the slot moved"
            send(2)
            total = {u: len(e) for u, e in everyone.items()}

            def done() -> bool:
                assert alive(worker), "the worker stopped"
                return all(served(u)[1].get("version") == total[u] for u in people)

            wait_until(done, timeout=120, what="every event applied")
            for user in people:
                status, view = served(user)
                assert status == 200
                assert comparable(view) == person_oracle(own, everyone[user], user), user
    finally:
        for c in closing:
            c.close()
        worker.stop()
