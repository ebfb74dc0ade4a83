"""The rule lifecycle on the spread layout (TRAITFLOW_REDIS_LAYOUT=spread), on the local
Redis Cluster: each bucket's copy of the rules version refuses a commit computed at
another version (`traitflow.spread_rules`); real workers, the API and the backfill
process create, change and delete a computed attribute while events flow, and a
recomputation ends where the batch answer is."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from attributes.profile import ProfileState
from streams.dry_run import dry_run
from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.stitching_support import comparable, event, order, person_oracle
from tests.integration.test_redis_cluster_spread_worker import spread_settings
from tests.integration.workers import alive, running_api, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.recomputation_requests import recompute_for
from traitflow.rule_catalog import Catalog, RedisRuleCatalog, RuleSource
from traitflow.services import Daemon
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import Expected, ProfileWrite, RulesChanged
from traitflow.topics import ensure_topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]

#: a handful: every test's people fall in most of them
BUCKETS = 8
RULES = """\
attributes:
  - {name: seen, function: count}
  - {name: purchase_count, function: count, event: Order Completed}
"""
SPEND = {
    "name": "spend",
    "function": "sum",
    "field": "properties.revenue",
    "event": "Order Completed",
}
#: the update: what `spend` counts changes (a new revision, backfilled again)
BIG_SPEND = {**SPEND, "where": "properties.revenue > 50"}
PATH = "/data/core/ca/attributes"


# --- a commit against a raised copy, on a real node ----------------------------------


def two_buckets(store: SpreadProfileStore) -> tuple[str, str]:
    first = "r-0"
    bucket = store.layout.profile_bucket("user", first)
    other = next(
        f"r-{n}" for n in range(1, 1000) if store.layout.profile_bucket("user", f"r-{n}") != bucket
    )
    return first, other


def written(pid: str, version: int) -> ProfileWrite:
    state = ProfileState(id=pid, version=version, identities={"user_id": [pid]})
    return ProfileWrite(state, b"state", f'{{"v": {version}}}'.encode())


def test_a_commit_at_another_rules_version_is_refused_in_a_bucket_whose_copy_was_raised(
    cluster: LocalCluster,
) -> None:
    """Copies only go up; a bucket refuses a commit computed at an older version (and
    at a newer one its process did not raise it to); a commit across buckets of which
    one was raised commits in the others and says which profiles it wrote."""

    async def run() -> None:
        prefix = f"tfsv-{uuid.uuid4().hex[:6]}"
        store = SpreadProfileStore.from_url(cluster.url, prefix, BUCKETS)
        try:
            a, b = two_buckets(store)
            layout = store.layout

            async def commit(pid: str, version: int, rules: int) -> None:
                expected = Expected(versions={pid: version - 1 or None}, rules_version=rules)
                await store.commit("user", [written(pid, version)], expected=expected)

            async def copies() -> list[int]:
                keys = [layout.keys(n).rules_version() for n in range(BUCKETS)]
                return [int(v or 0) for v in await store.protocol.get(keys)]

            await commit(a, 1, 0)  # no copy yet: version 0
            await store.raise_rules(2)
            assert await copies() == [2] * BUCKETS
            await store.raise_rules(1)  # never lowered
            assert await copies() == [2] * BUCKETS
            for older in (0, 1):
                with pytest.raises(RulesChanged) as refused:
                    await commit(a, 2, older)
                assert refused.value.computed_with == older
                assert refused.value.committed == frozenset()
            with pytest.raises(RulesChanged):
                await commit(a, 2, 3)  # a version no process raised the copies to
            await commit(a, 2, 2)
            assert await store.read_views("user", [("id", a)]) == [b'{"v": 2}']

            # a raise that has reached a's bucket and not b's yet: a commit at 2 of
            # both writes b's profile alone, and says so
            await store.client.set(layout.of_profile("user", a).rules_version(), 3)
            both = [written(a, 3), written(b, 1)]
            expected = Expected(versions={a: 2, b: None}, rules_version=2)
            with pytest.raises(RulesChanged) as partly:
                await store.commit("user", both, expected=expected)
            assert partly.value.committed == {b}
            views = await store.read_views("user", [("id", a), ("id", b)])
            assert views == [b'{"v": 2}', b'{"v": 1}']
        finally:
            await store.close()

    asyncio.run(run())


# --- real workers, the API and the backfill process -----------------------------------


@dataclass
class People:
    """Who the events are about, what each was sent (by source), and how each is read
    back."""

    settings: Settings
    users: list[str]
    #: source -> (its publisher, user -> the events it sent of that user)
    sources: dict[str, tuple[Publisher, dict[str, list[Any]]]] = field(default_factory=dict)

    def round(self, kind: str, source: str = "web") -> None:
        """One event per person: a page seen anonymously, a login (the anonymous
        profile merged into the user's, often across buckets), or an order."""
        publish, sent = self.sources[source]
        batch = []
        for user in self.users:
            n = sum(len(s.get(user, ())) for _, s in self.sources.values())
            mid, ago = f"{user}-{n}", 600 - n / 10
            if kind == "browse":
                made = event(mid, ago, anonymousId=f"anon-{user}")
            elif kind == "login":
                traits = {"email": f"{user}@example.com"}
                made = event(
                    mid, ago, "identify", traits=traits, userId=user, anonymousId=f"anon-{user}"
                )
            else:
                revenue = float(10 + (n * 37 + len(user) * 11) % 90)
                made = order(mid, ago, revenue, f"sku-{n % 5}", userId=user)
            sent.setdefault(user, []).append(made)
            batch.append(made)
        publish(batch)

    def events(self, user: str, *sources: str) -> list[Any]:
        """The events sent of `user` by `sources` (default: every source), in order."""
        chosen = [s for name, (_, s) in self.sources.items() if not sources or name in sources]
        return sorted((e for s in chosen for e in s.get(user, ())), key=lambda e: e["timestamp"])

    def identities(self, user: str) -> list[tuple[str, str]]:
        return [
            ("user_id", user),
            ("anonymous_id", f"anon-{user}"),
            ("email", f"{user}@example.com"),
        ]


def served_part(view: Any) -> Any:
    """What the batch answer must equal: all but the write counter and rules version
    (a backfill's join is a write of its own)."""
    return comparable({k: v for k, v in view.items() if k not in ("version", "rules_version")})


@contextlib.contextmanager
def spread_pipeline(
    settings: Settings, cluster: LocalCluster, tmp_path: Path, workers: int, people: int = 12
) -> Iterator[tuple[People, httpx.Client, list[Daemon]]]:
    """`workers` real `traitflow worker`s (each with its backfill process beside it)
    and a real `traitflow api` on the spread layout of `cluster`, with `RULES`; two
    sources, `web` (trusted: its events link identities) and `crm`."""
    name = f"tfsr-{uuid.uuid4().hex[:6]}"
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES)
    topics = {f"{name}-web": "web", f"{name}-crm": "crm"}
    own = spread_settings(
        settings, name, cluster, tmp_path, rules_path=rules_path, topic_partitions=2,
        backfill_process=True, sources=topics,
        # polled seldom: most processes switch when a bucket that the first one to poll
        # raised refuses their commit, not at their own poll
        rules_poll_s=3.0,
    )  # fmt: skip
    asyncio.run(ensure_topics(own))
    sent = People(own, [f"p{n}" for n in range(people)])
    sent.sources = {source: (Publisher(own, topic), {}) for topic, source in topics.items()}
    started = [start_worker(own, f"worker-{n}") for n in range(workers)]
    try:
        token = create_key(own, "rules-admin", admin=True, rate_per_s=1e5, burst=100_000)
        with running_api(own, "api") as base:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
                yield sent, http, started
    finally:
        for worker in started:
            worker.stop()


@contextlib.contextmanager
def flowing(people: People) -> Iterator[None]:
    """Rounds of orders and logins sent without a pause while the body runs (and one
    after it at least): batches straddle every switch of rules versions it makes."""
    stop = threading.Event()

    def send() -> None:
        while True:
            for kind in ("order", "login", "order"):
                people.round(kind)
            if stop.is_set():
                return
            time.sleep(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the publisher did not stop"


def oracle_settings(people: People, tmp_path: Path, *managed: dict[str, Any]) -> Settings:
    """Settings whose rule file has `managed` (attributes made through the API) as file
    attributes: what the batch answer is computed with."""
    path = tmp_path / f"oracle-{uuid.uuid4().hex[:6]}.yaml"
    lines = [f"  - {dict(attribute)}".replace("'", '"') for attribute in managed]
    path.write_text(RULES + "".join(line + "\n" for line in lines))
    return people.settings.model_copy(update={"rules_path": path})


def everyone_serves(
    people: People,
    http: httpx.Client,
    oracle: Settings,
    workers: list[Daemon],
    what: str,
    *,
    sources: tuple[str, ...] = (),
    part: Callable[[Any], Any] = served_part,
) -> None:
    """Wait until every identity of every person serves (`part` of) the batch answer
    over that person's events of `sources` (default: all), through the API; fail naming
    the first that does not."""
    wants = {u: part(person_oracle(oracle, people.events(u, *sources), u)) for u in people.users}

    def wrong() -> list[tuple[str, str, Any, Any]]:
        found = []
        for worker in workers:
            alive(worker)
        for user in people.users:
            for kind, value in people.identities(user):
                r = http.get(f"/v1/collections/users/records/{kind}/{value}")
                got = part(r.json()) if r.status_code == 200 else r.status_code
                if got != wants[user]:
                    found.append((kind, value, got, wants[user]))
        return found

    last: list[Any] = []

    def settled() -> bool:
        last[:] = wrong()
        return not last

    try:
        wait_until(settled, timeout=120, what=what)
    except pytest.fail.Exception:
        pytest.fail(f"{what}: (kind, value, served, batch answer) {last[:1]}")


def attribute_status(http: httpx.Client, attribute: str) -> str:
    r = http.get(attribute)
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def switched(people: People, workers: list[Daemon], version: int) -> None:
    """The owner of every ingest partition with traffic switched to `version` (each
    polls every second): it noted where the partition's computing at it starts
    (`tf:rs`, noted at each switch by the owner of a partition it has read)."""
    own = people.settings
    keys = KeyLayout(own.key_prefix)
    names = [f"{t}/{p}" for t in own.sources for p in range(own.topic_partitions)]
    client = RedisCluster.from_url(own.redis_url)

    def noted() -> bool:
        read = [n for n in names if client.exists(keys.rules_starts(n))]
        return bool(read) and all(client.hexists(keys.rules_starts(n), str(version)) for n in read)

    try:
        wait_until(
            lambda: all(alive(w) for w in workers) and noted(),
            timeout=60,
            what=f"the workers to switch to rules version {version}",
        )
    finally:
        client.close()


def test_an_attribute_made_changed_and_deleted_through_the_api_on_the_spread_layout(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """Two workers and the API: `spend` is made while events flow, backfilled (by a
    backfill process) and joined; every identity of every person then serves the batch
    answer over all their events, `spend` included. Changed (what it counts), it is
    backfilled again to the new answer; deleted, it leaves every view at the next
    write."""
    with spread_pipeline(settings, cluster, tmp_path, workers=2, people=40) as (
        people,
        http,
        workers,
    ):
        for kind in ("browse", "browse", "login", "order", "order"):
            people.round(kind)
        everyone_serves(people, http, oracle_settings(people, tmp_path), workers, "history")

        with flowing(people):  # while the workers switch and the backfill runs
            time.sleep(0.5)
            made = http.post(PATH, json={**SPEND, "status": "ACTIVE"})
            assert made.status_code == 201, made.text
            assert made.json()["status"] == "PROCESSING"  # its history is backfilled
            attribute = f"{PATH}/{made.json()['id']}"
            wait_until(
                lambda: attribute_status(http, attribute) == "ACTIVE",
                timeout=120,
                what=f"the backfill of spend:\n{worker_log(workers[0])[-3000:]}",
            )
        everyone_serves(
            people, http, oracle_settings(people, tmp_path, SPEND), workers, "spend made"
        )
        assert "backfilled spend: ACTIVE" in "".join(worker_log(w) for w in workers)
        # a dry run reads the profiles where they are: recomputing the ACTIVE one over
        # the whole topic gives what is served
        source = RuleSource.read(people.settings.rules_path, people.settings.entities)
        again = asyncio.run(dry_run(people.settings, source, made.json()["id"], 5))
        assert len(again) == 5
        assert all(p.before == p.after is not None for p in again), again

        with flowing(people):
            time.sleep(0.5)
            changed = http.patch(attribute, json={"where": BIG_SPEND["where"]})
            assert changed.status_code == 200, changed.text
            wait_until(
                lambda: attribute_status(http, attribute) == "ACTIVE",
                timeout=120,
                what=f"the backfill of the changed spend:\n{worker_log(workers[0])[-3000:]}",
            )
        everyone_serves(
            people, http, oracle_settings(people, tmp_path, BIG_SPEND), workers, "spend changed"
        )

        assert http.delete(attribute).status_code == 204
        version = http.get(PATH).json()["rulesVersion"]
        switched(people, workers, version)
        people.round("order")  # every profile written once more, without it
        everyone_serves(people, http, oracle_settings(people, tmp_path), workers, "spend deleted")


def catalog_call(settings: Settings, work: Callable[[RedisRuleCatalog], Any]) -> Any:
    async def call() -> Any:
        catalog = RedisRuleCatalog.from_url(settings, settings.key_prefix)
        try:
            return await work(catalog)
        finally:
            await catalog.close()

    return asyncio.run(call())


def test_a_recomputation_on_the_spread_layout_ends_on_the_batch_answer(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """A recomputation of every attribute without source `crm`'s history (issue 16's,
    asked through the catalog as a source delete job asks it, without the job's
    commands) while `web`'s events flow: computed from the history into a new
    generation, served, every profile rendered again. Once done, and before any other
    event, every identity serves attributes equal to the batch answer over `web`'s
    events alone: the render reached every profile on every node."""
    with spread_pipeline(settings, cluster, tmp_path, workers=1) as (people, http, workers):
        for kind, source in [("browse", "web"), ("login", "web"), ("order", "web"),
                             ("order", "crm"), ("order", "crm")]:  # fmt: skip
            people.round(kind, source)
        oracle = oracle_settings(people, tmp_path)
        everyone_serves(people, http, oracle, workers, "history")

        job = f"job-{uuid.uuid4().hex[:6]}"
        crm = [topic for topic, source in people.settings.sources.items() if source == "crm"]
        catalog_call(people.settings, lambda c: c.change(recompute_for(job, crm)))
        people.round("order")  # while it is computed

        def done() -> Catalog | None:
            alive(workers[0])
            snapshot: Catalog = catalog_call(people.settings, lambda c: c.snapshot())
            return snapshot if job in snapshot.recomputed else None

        finished = wait_until(
            done, timeout=120, what=f"the recomputation:\n{worker_log(workers[0])[-3000:]}"
        )
        assert finished.recomputation is None
        assert finished.generation > 0  # a new generation of every state is served

        def attributes(view: Any) -> Any:
            return view["attributes"]

        everyone_serves(
            people, http, oracle, workers, "recomputed", sources=("web",), part=attributes
        )
        log = worker_log(workers[0])
        assert f"every view shows generation {finished.generation}" in log, log[-3000:]
        people.round("order")
        everyone_serves(people, http, oracle, workers, "after", sources=("web",), part=attributes)
