"""A real `traitflow worker` and `traitflow api` on the local Redis Cluster with
TRAITFLOW_REDIS_CLUSTER=true: every connection they make (the worker's store, outbox,
rules catalog, durability wait; the API's reads and keys) goes to the node serving the
prefix's hash tag, and follows it when `redis-cli --cluster reshard` moves it."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.reshard_support import PublishedRounds
from tests.integration.stitching_support import comparable, person_oracle
from tests.integration.test_redis_cluster import person_event
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import sync_client
from traitflow.redis_cluster import slot_of
from traitflow.topics import ensure_topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def test_a_worker_and_the_api_on_the_cluster_serve_the_batch_answer_across_a_reshard(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """The settings name any node (the first), not the slot's owner. Events flow
    before, during and after the tag's slot moves to another master; every profile
    the API serves ends equal to the batch answer."""
    own = settings.isolated(
        f"tfc-{uuid.uuid4().hex[:6]}", redis_url=cluster.url, redis_cluster=True, home=tmp_path
    )
    assert own.key_prefix.startswith("{")
    asyncio.run(ensure_topics(own))
    publish = Publisher(own, next(iter(own.sources)))
    keys = KeyLayout(own.key_prefix)
    people = [f"cu-{p}" for p in range(30)]
    rounds = PublishedRounds(people, random.Random(3), person_event, publish)
    everyone, send = rounds.everyone, rounds.send

    worker = start_worker(own, "worker")
    client = sync_client(own)
    closing: list[httpx.Client] = []
    try:
        send(4)
        wait_until(
            lambda: (
                alive(worker)
                and client.exists(*(keys.view("user", u) for u in people)) == len(people)
            ),
            timeout=90,
            what="the worker's first profiles",
        )
        token = create_key(own, "cluster-admin", admin=True, rate_per_s=1e5, burst=100_000)
        with running_api(own, "api") as base:
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
            closing.append(http)

            def served(user: str) -> Any:
                r = http.get(f"/v1/collections/users/records/user_id/{user}")
                return r.status_code, r.json()

            assert served(people[0])[0] == 200
            slot = slot_of(own.key_prefix)
            target = (cluster.owner(slot) + 1) % MASTERS
            mover = threading.Thread(target=cluster.move_slot, args=(slot, target))
            mover.start()
            for _ in range(10):
                send(1)
            mover.join()
            assert cluster.owner(slot) == target
            send(2)
            total = {u: len(e) for u, e in everyone.items()}

            def done() -> bool:
                return all(served(u)[1].get("version") == total[u] for u in people)

            wait_until(done, timeout=120, what="every event applied")
            for user in people:
                status, view = served(user)
                assert status == 200
                assert comparable(view) == person_oracle(own, everyone[user], user), user
    finally:
        client.close()
        for c in closing:
            c.close()
        worker.stop()
