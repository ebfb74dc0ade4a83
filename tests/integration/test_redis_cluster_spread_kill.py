"""A worker of the spread layout killed (SIGKILL) between the steps of a commit that
merges across slots (`traitflow.spread_claims`: claim, commit, finalize), on the local
3-master cluster. What it leaves (claims, a lock, maybe an intent) must be finished or
undone by the others: another worker that meets it once its lease is over, and the
killed worker's successor, which recovers intents at start and is given the killed
worker's batch again (Kafka redelivers what was not committed). Every identity of the
person must then serve the batch answer for all of the person's events, once each."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.processor import ENTITY
from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible
from tests.integration.spread_dying_worker import STEPS
from tests.integration.stitching_support import comparable, person_oracle
from tests.integration.test_redis_cluster import RULES, oracle_settings
from tests.integration.test_redis_cluster_spread import (
    BUCKETS,
    spread_workers,
)
from tests.integration.test_stitching import (
    EMAIL,
    EVERY_EVENT,
    RACE_A,
    RACE_B,
    SETUP_A,
    SETUP_B,
    A,
    U,
    Worker,
)
from traitflow.spread_claims import ABORTED
from traitflow.spread_plan import SpreadCommit
from traitflow.spread_protocol import SpreadProtocol
from traitflow.spread_store import SpreadProfileStore

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


@pytest.fixture
def prefix() -> str:
    return f"tfk-{uuid.uuid4().hex[:8]}"


#: the claims' lease in these tests (ms): short, so that the others may recover soon
LEASE_MS = 400


def die_after(cluster: LocalCluster, prefix: str, step: str, worker: Worker, tmp: Path) -> None:
    """Worker `worker`'s login batch (RACE_A: it merges the anonymous profile into the
    user's), processed by a process that kills itself after `step`."""
    spec = {
        "url": cluster.url,
        "prefix": prefix,
        "buckets": BUCKETS,
        "lease_ms": LEASE_MS,
        "step": step,
        "rules": str(RULES),
        "partition": worker.partition,
        "offset": worker.offset,
        "events": RACE_A,
    }
    path = tmp / "spec.json"
    path.write_bytes(orjson.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.spread_dying_worker", str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr.decode()[:3000]


@pytest.mark.parametrize("step", STEPS)
def test_a_worker_killed_between_the_steps_of_a_merge_leaves_nothing_wrong(
    cluster: LocalCluster, prefix: str, step: str, tmp_path: Path
) -> None:
    async def go() -> list[bytes | None]:
        async with contextlib.AsyncExitStack() as stack:
            a, b = await stack.enter_async_context(spread_workers(cluster, prefix))
            for worker, events in ((a, SETUP_A), (b, SETUP_B)):
                await worker.processor.process(worker.records(events))
            await a.store.close()  # worker A's partition goes to the process that dies
            await asyncio.to_thread(die_after, cluster, prefix, step, a, tmp_path)
            await asyncio.sleep(LEASE_MS / 1000 + 0.1)
            # B writes both profiles: it meets the dead commit's lock and claims
            await b.processor.process(b.records(RACE_B))
            # A's successor recovers what is left committed, and is given A's batch again
            async with spread_workers(cluster, prefix, count=1) as (successor,):
                inner = successor.store.inner
                assert isinstance(inner, SpreadProfileStore)
                await inner.recover()
                successor.offset = a.offset
                await successor.processor.process(successor.records(RACE_A))
                lookups = [("user_id", U), ("anonymous_id", A), ("email", EMAIL), ("id", U)]
                views = await inner.read_views(ENTITY, lookups)
        return views

    views = asyncio.run(go())

    assert views[0] is not None
    assert views.count(views[0]) == len(views), "identities serve different views"
    view = orjson.loads(views[0])
    assert comparable(view) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    assert view["version"] == len(EVERY_EVENT)
    # nothing of the dead commit is left but, if it was rolled back, the mark of that:
    # no intent to run, no claimed pointer, no lock
    left = {key: value for index in range(MASTERS) for key, value in _left(cluster, prefix, index)}
    assert {key for key, value in left.items() if value[:1] == b"\x00"} == set()
    intents = {value for key, value in left.items() if b":it:" in key}
    assert intents <= {ABORTED}
    assert (ABORTED in intents) == (step == "claimed")


def _left(cluster: LocalCluster, prefix: str, index: int) -> list[tuple[bytes, bytes]]:
    """The pointers, version keys and intents of node `index`, with their values."""
    client = cluster.client(index)
    try:
        keys = list(client.scan_iter("{" + prefix + ".b*}:*", count=1000))
        found = [(key, client.get(key)) for key in keys if client.type(key) == b"string"]
        return [(key, value) for key, value in found if isinstance(value, bytes)]
    finally:
        client.close()


class FailingProtocol(SpreadProtocol):
    """Raises a lost connection after `step` of its first commit that claims keys, as
    a node that stops answering would; the store must settle the commit itself."""

    def __init__(self, step: str, *args: Any) -> None:
        super().__init__(*args)
        self.step: str | None = step

    async def commit_buckets(self, spread: SpreadCommit) -> dict[int, list[bytes | None]]:
        if spread.claims and self.step == "claimed":
            self.step = None
            raise ConnectionError("lost after the claims")
        refused = await super().commit_buckets(spread)
        if spread.claims and self.step == "committed":
            self.step = None
            raise ConnectionError("lost after the commit")
        return refused


@pytest.mark.parametrize("step", ["claimed", "committed"])
def test_a_commit_that_fails_part_way_is_settled_by_its_own_worker_at_once(
    cluster: LocalCluster, prefix: str, step: str
) -> None:
    """With a lease of a minute, the other worker's batch, which writes both profiles,
    still goes through within seconds: the failing worker rolled its commit forward
    (it had committed) or back (it had not) before raising."""

    async def go() -> tuple[list[bytes | None], float]:
        async with spread_workers(cluster, prefix) as (a, b):
            for worker, events in ((a, SETUP_A), (b, SETUP_B)):
                await worker.processor.process(worker.records(events))
            store = a.store.inner
            assert isinstance(store, SpreadProfileStore)
            store.lease_ms = 60_000
            store.protocol = FailingProtocol(step, store.client, store.layout, store.clock)
            first = a.offset
            with pytest.raises(ConnectionError):
                await a.processor.process(a.records(RACE_A))
            started = time.monotonic()
            await asyncio.wait_for(b.processor.process(b.records(RACE_B)), 20)
            took = time.monotonic() - started
            a.offset = first  # the failed batch, given again
            a.store.clear()
            await a.processor.process(a.records(RACE_A))
            lookups = [("user_id", U), ("anonymous_id", A), ("email", EMAIL), ("id", U)]
            return await a.store.inner.read_views(ENTITY, lookups), took

    views, took = asyncio.run(go())

    assert took < 20
    assert views[0] is not None
    assert views.count(views[0]) == len(views), "identities serve different views"
    view = orjson.loads(views[0])
    assert comparable(view) == person_oracle(oracle_settings(), EVERY_EVENT, U)
    left = {key: value for index in range(MASTERS) for key, value in _left(cluster, prefix, index)}
    assert {key for key, value in left.items() if value[:1] == b"\x00"} == set()
