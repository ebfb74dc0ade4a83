"""What scans every profile, on the spread layout (docs/redis-cluster.md, option B): a
real `traitflow worker` over three sources' topics on the local Redis Cluster, and
real `traitflow api` processes that run export and source delete jobs, and the
`traitflow export`, `profiles`, `jobs` and `recount` commands.

An export holds every profile of every bucket once, as served and as the batch
answer; a source delete job erases the profiles only its source made, takes its
traits from the others, and is COMPLETED with every command counted (each bucket's
commits count their own); a job whose API process is killed -9 mid-scan is taken
over by another and ends the same; a recount rebuilds every bucket's counters. The
rules' recomputation is not asked for here (TRAITFLOW_BACKFILL off: attributes KEPT).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from redis.cluster import RedisCluster

from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.test_exports import batch_views
from tests.integration.test_redis_cluster_spread_worker import BUCKETS, spread_settings
from tests.integration.test_source_jobs import identify, order
from tests.integration.workers import ROOT, alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.services import Daemon
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_store import SpreadProfileStore
from traitflow.topics import ensure_topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]

RULES = (ROOT / "examples" / "rules.yaml").read_text()
#: people per group; a group is the sources that sent a person's events
PEOPLE = 10
GROUPS = {"w": ("web",), "s": ("shop",), "c": ("crm",), "ws": ("web", "shop"), "wc": ("web", "crm")}
TRAITS: dict[str, dict[str, Any]] = {
    "web": {"plan": "pro"},
    "shop": {"tier": "gold"},
    "crm": {"score": 7},
}


@dataclass
class Spread:
    own: Settings
    worker: Daemon
    client: RedisCluster
    layout: SpreadLayout
    #: group -> its people; person -> the events sent for them
    groups: dict[str, list[str]]
    events: dict[str, list[dict[str, Any]]]
    admin: str
    #: the sources whose data a job deleted
    deleted: set[str] = dataclasses.field(default_factory=set)

    def view(self, user: str) -> dict[str, Any] | None:
        raw = self.client.get(self.layout.keys(0).view("user", user))
        return None if raw is None else dict(orjson.loads(raw))

    def state_exists(self, user: str) -> bool:
        return bool(self.client.exists(self.layout.keys(0).state("user", user)))

    def views(self) -> dict[str, bytes]:
        """Every view of every bucket, by profile id (read key by key)."""
        found: dict[str, bytes] = {}
        for bucket in range(BUCKETS):
            prefix = self.layout.keys(bucket).view_prefix("user")
            client: Any = self.client  # redis-py's cluster methods are untyped
            for node in client.get_primaries():
                for key in client.scan_iter(match=prefix + "*", target_nodes=node):
                    raw = client.get(key)
                    if raw is not None:
                        found[key.decode()[len(prefix) :]] = raw
        return found

    def cli(self, *args: str, **changes: Any) -> subprocess.CompletedProcess[str]:
        env = self.own.model_copy(update=changes).child_env() if changes else self.own.child_env()
        return subprocess.run(
            [sys.executable, "-m", "traitflow", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture(scope="module")
def spread(
    settings: Settings, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Spread]:
    tmp = tmp_path_factory.mktemp("spread-jobs")
    name = f"tfsj-{uuid.uuid4().hex[:6]}"
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    sources = {f"{name}-{source}": source for source in TRAITS}
    own = spread_settings(
        settings, name, cluster, tmp, sources=sources, rules_path=rules, backfill=False,
        source_job_batch=3, export_lease_s=1.0,
    )  # fmt: skip
    asyncio.run(ensure_topics(own))
    groups = {g: [f"{g}-{name}-{n}" for n in range(PEOPLE)] for g in GROUPS}
    events: dict[str, list[dict[str, Any]]] = {}
    for group, people in groups.items():
        for person in people:
            for n, source in enumerate(GROUPS[group]):
                sent = [identify(person, 9 - 2 * n, **TRAITS[source]), order(person, 8 - 2 * n, 5)]
                for made in sent:
                    made["messageId"] += f"-{source}"
                events.setdefault(person, []).extend(sent)
                Publisher(own, f"{name}-{source}")(sent)
    worker = start_worker(own, "worker")
    client = RedisCluster.from_url(cluster.url)
    layout = SpreadLayout.of(own.key_prefix, BUCKETS)
    found = Spread(own, worker, client, layout, groups, events, "")
    try:

        def written() -> bool:
            assert alive(worker), "the worker stopped"
            return all(
                (view := found.view(p)) is not None and view["version"] == len(events[p])
                for p in events
            )

        wait_until(written, timeout=120, what="every profile to be written")
        found.admin = create_key(own, "jobs-admin", admin=True, rate_per_s=1e5, burst=100_000)
        yield found
    finally:
        worker.stop()
        client.close()


def test_an_export_on_the_spread_layout_holds_every_profile_once_as_the_batch_answer(
    spread: Spread,
) -> None:
    headers = {"Authorization": f"Bearer {spread.admin}"}
    with (
        running_api(spread.own, "api-export") as url,
        httpx.Client(base_url=url, headers=headers, timeout=10) as api,
    ):
        body = {"destination": {"file": "all.ndjson"}, "batchSize": 7}
        made = api.post("/export/jobs", json=body)
        assert made.status_code == 201, made.text

        def ended() -> dict[str, Any] | None:
            job: dict[str, Any] = api.get(f"/export/jobs/{made.json()['id']}").json()
            return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        job = wait_until(ended, timeout=60, what="the export to end")
    views = spread.views()
    assert len(views) == len(spread.events)  # every bucket's, on every master
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"]["exported"] == len(views)
    assert job["progress"]["fraction"] == 1.0
    done = spread.cli("export", "start", "--file", "cli.ndjson", "--batch", "5")
    assert done.returncode == 0, done.stderr
    expected = batch_views(spread.own, [e for sent in spread.events.values() for e in sent])
    for name in ("all.ndjson", "cli.ndjson"):
        lines = (spread.own.exports_path / name).read_bytes().splitlines()
        ids = [orjson.loads(line)["id"] for line in lines]
        assert len(ids) == len(set(ids)), f"{name}: a profile written twice"
        assert {orjson.loads(line)["id"]: line for line in lines} == views, name
        for line in lines:
            view = orjson.loads(line)
            assert view["attributes"] == expected[view["id"]]["attributes"], (name, view["id"])


def test_traitflow_profiles_erases_a_person_on_the_spread_layout(spread: Spread) -> None:
    person = spread.groups["w"][0]
    erased = spread.cli("profiles", "delete", person, "--type", "user_id", "--wait", "60")
    assert erased.returncode == 0, erased.stderr
    request, status = erased.stdout.splitlines()[:2]
    assert orjson.loads(status)["status"] == "applied"
    assert spread.view(person) is None
    assert not spread.state_exists(person)
    shown = spread.cli("profiles", "erasure", request)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["status"] == "applied"
    del spread.events[person]
    spread.groups["w"].remove(person)


def erased_source(spread: Spread, source: str) -> None:
    """The profiles only `source` made are gone; the others it fed lost its traits and
    kept the rest; those it did not feed are as they were."""
    for group, people in spread.groups.items():
        for person in people:
            view = spread.view(person)
            if GROUPS[group] == (source,):
                assert view is None, person
                assert not spread.state_exists(person), person
                continue
            assert view is not None, person
            left = [s for s in GROUPS[group] if s != source and s not in spread.deleted]
            kept = {k: v for s in left for k, v in TRAITS[s].items()}
            assert view["traits"] == kept, person


def tallies(spread: Spread, job_id: str) -> dict[int, int]:
    """Bucket -> the job's commands its commits applied (those that have any)."""
    found = {}
    for bucket in range(BUCKETS):
        count = spread.client.hget(spread.layout.keys(bucket).source_job_tallies(), job_id)
        if count is not None:
            found[bucket] = int(count)
    return found


def fed_by(spread: Spread, source: str) -> int:
    return sum(len(p) for g, p in spread.groups.items() if source in GROUPS[g])


def test_a_source_delete_job_on_the_spread_layout_completes_with_every_command_counted(
    spread: Spread,
) -> None:
    headers = {"Authorization": f"Bearer {spread.admin}"}
    with (
        running_api(spread.own, "api-jobs") as url,
        httpx.Client(base_url=url, headers=headers, timeout=10) as api,
    ):
        made = api.post("/system/jobs", json={"dataSetId": "shop"})
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]

        def finished() -> dict[str, Any] | None:
            found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
            return found if found["status"] in ("COMPLETED", "FAILED") else None

        job = wait_until(finished, timeout=90, what="the job to complete")
        listed = api.get("/system/jobs").json()["children"]
        assert job["status"] == "COMPLETED", job
        progress = job["progress"]
        assert progress["scanDone"] is True
        assert progress["profilesScanned"] == len(spread.events)
        assert progress["commandsPublished"] == fed_by(spread, "shop")
        assert progress["commandsApplied"] == fed_by(spread, "shop")
        assert progress["attributes"].startswith("KEPT"), progress
        assert next(j for j in listed if j["id"] == job_id)["progress"] == progress
        erased_source(spread, "shop")
        shown = spread.cli("jobs", "show", job_id)
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["progress"] == progress
        counted = tallies(spread, job_id)  # each bucket counted its own commands
        assert sum(counted.values()) == fed_by(spread, "shop")
        assert len(counted) > 1
        assert api.delete(f"/system/jobs/{job_id}").status_code == 204
        assert tallies(spread, job_id) == {}  # forgotten in every bucket
        assert api.get(f"/system/jobs/{job_id}").status_code == 404
    for person in spread.groups.pop("s"):
        del spread.events[person]
    spread.deleted.add("shop")


def test_a_source_delete_job_whose_api_is_killed_9_mid_scan_is_taken_over(
    spread: Spread,
) -> None:
    headers = {"Authorization": f"Bearer {spread.admin}"}
    slow = spread.own.model_copy(update={"source_job_rate_per_s": 3.0})
    with (
        running_api(slow, "api-slow") as url,
        httpx.Client(base_url=url, headers=headers, timeout=10) as api,
    ):
        made = api.post("/system/jobs", json={"dataSetId": "crm"})
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]

        def mid_scan() -> dict[str, Any] | None:
            found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
            return found if found["progress"]["profilesScanned"] >= 6 else None

        before = wait_until(mid_scan, timeout=60, what="the job to be mid-scan")
        pid = Daemon("api-slow", slow.home / "api-slow").pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
    assert before["progress"]["scanDone"] is False, before
    with (
        running_api(spread.own, "api-next") as url,
        httpx.Client(base_url=url, headers=headers, timeout=10) as api,
    ):

        def finished() -> dict[str, Any] | None:
            found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
            return found if found["status"] in ("COMPLETED", "FAILED") else None

        job = wait_until(finished, timeout=120, what="another API process to finish the job")
    assert job["status"] == "COMPLETED", job
    progress = job["progress"]
    assert progress["profilesScanned"] >= len(spread.events)
    # a round published but not checkpointed is published again (the same messageIds:
    # applied once); a profile it erased is not scanned again
    assert progress["commandsApplied"] >= progress["commandsPublished"]
    assert progress["commandsApplied"] == fed_by(spread, "crm")
    erased_source(spread, "crm")
    for person in spread.groups.pop("c"):
        del spread.events[person]
    spread.deleted.add("crm")


def test_a_recount_on_the_spread_layout_rebuilds_every_buckets_counters(spread: Spread) -> None:
    spread.worker.stop()  # a recount is made with the workers stopped

    async def counts() -> dict[str, int]:
        store = SpreadProfileStore.from_url(spread.own, spread.own.key_prefix, BUCKETS)
        try:
            return await store.profile_counts("user")
        finally:
            await store.close()

    before = asyncio.run(counts())
    assert before["profile"] == len(spread.events)
    for bucket in range(BUCKETS):
        keys = spread.layout.keys(bucket)
        spread.client.delete(keys.profile_counts("user"))
    assert asyncio.run(counts()).get("profile", 0) == 0
    done = spread.cli("profiles", "recount", "--workers-stopped", "--batch", "4")
    assert done.returncode == 0, done.stderr
    assert f"{len(spread.events)} states counted" in done.stdout
    # the commits leave a category whose last profile went at 0; a recount omits it
    assert asyncio.run(counts()) == {name: n for name, n in before.items() if n}
