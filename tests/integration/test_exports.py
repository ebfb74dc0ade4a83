"""Export jobs end to end: profiles written by a real worker from a real broker,
exported through a real API process (to a file, an audience to a topic) and by the
`traitflow export` command, which is killed -9 mid-way and then resumed by hand or
taken over by an API process. Every export is read back and compared with the views
in Redis and with the batch answer over the same events: each profile exactly once in
a file, none missing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import redis

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import OwnWorker, running_api, worker_with_rules
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.topics import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    event: Order Completed
  - name: orders
    function: count
    event: Order Completed
audiences:
  - name: big_spenders
    condition: spend >= 100.0
"""

USERS = 600


@dataclass
class Exported:
    own: OwnWorker
    events: list[dict[str, Any]]
    users: list[str]
    admin: str
    client: redis.Redis

    @property
    def settings(self) -> Settings:
        return self.own.settings

    def views(self) -> dict[str, bytes]:
        """Every view of the module's prefix in Redis, by profile id."""
        prefix = self.own.keys.view_prefix("user")
        keys = list(self.client.scan_iter(match=prefix + "*", count=1000))
        values = cast(list[bytes | None], self.client.mget(keys) if keys else [])
        return {k.decode()[len(prefix) :]: v for k, v in zip(keys, values, strict=True) if v}

    def job(self, job_id: str) -> dict[str, bytes]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.own.keys.export_job(job_id)))
        return {k.decode(): v for k, v in raw.items()}

    def newest_job(self) -> str | None:
        ids = cast(list[bytes], self.client.zrevrange(self.own.keys.export_jobs(), 0, 0))
        return ids[0].decode() if ids else None

    def file(self, name: str) -> Path:
        return self.settings.exports_path / name


def batch_views(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch answer: every user's view computed in memory from the same events."""

    async def run() -> dict[str, Any]:
        store = MemoryProfileStore()
        processor = BatchProcessor(  # linking as the workers' trusted source does
            load_rules(settings.rules_path), store, ListDeadLetters(), trust=TRUST_ALL
        )
        records = [Record("oracle", 0, i, orjson.dumps(e), 0) for i, e in enumerate(events)]
        await processor.process(records)
        users = sorted({str(e["userId"]) for e in events})
        views = await store.read_views("user", [("user_id", u) for u in users])
        return {u: orjson.loads(v) for u, v in zip(users, views, strict=True) if v}

    return asyncio.run(run())


@pytest.fixture(scope="module")
def exported(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("exports")
    name = f"tfexp-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(
        settings, tmp, RULES, name, topic_partitions=2, export_lease_s=1.0
    ) as own:
        run = uuid.uuid4().hex[:6]
        users = [f"ex-{run}-{i}" for i in range(USERS)]
        events: list[dict[str, Any]] = []
        for i, user in enumerate(users):
            events.append({"type": "identify", "userId": user, "traits": {"n": i}})
            for order in range(i % 3 + 1):
                events.append(
                    {
                        "type": "track",
                        "event": "Order Completed",
                        "userId": user,
                        "messageId": f"{user}-{order}",
                        "properties": {"revenue": float(i % 70 + order)},
                    }
                )
        own.publish(events)
        client = redis.Redis.from_url(own.settings.redis_url)
        keys = [own.keys.view("user", user) for user in users]
        expected = batch_views(own.settings, events)

        def all_written() -> bool:
            views = client.mget(keys)
            return all(
                v is not None and orjson.loads(v)["attributes"] == expected[u]["attributes"]
                for u, v in zip(users, views, strict=True)
            )

        wait_until(all_written, timeout=60, what="the worker to write every profile")
        admin = create_key(own.settings, "exports-admin", admin=True, rate_per_s=1e5, burst=100_000)
        try:
            yield Exported(own, events, users, admin, client)
        finally:
            client.close()


@contextlib.contextmanager
def api_client(exported: Exported, name: str) -> Iterator[httpx.Client]:
    with running_api(exported.settings, name) as url:
        headers = {"Authorization": f"Bearer {exported.admin}"}
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as client:
            yield client


def finished(api: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"/export/jobs/{job_id}").json()
        return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    job: dict[str, Any] = wait_until(ended, timeout=timeout, what=f"export job {job_id} to end")
    return job


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def assert_each_profile_once(exported: Exported, path: Path) -> None:
    """The file holds every view in Redis, each once, byte for byte."""
    lines = lines_of(path)
    ids = [orjson.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)), "a profile was written twice"
    views = exported.views()
    assert set(ids) == set(views), "profiles missing from (or foreign to) the file"
    assert {orjson.loads(line)["id"]: line for line in lines} == views


def test_an_export_to_a_file_is_every_profile_as_served_and_as_the_batch_answer(
    exported: Exported,
) -> None:
    with api_client(exported, "api-file") as api:
        answer = api.post(
            "/export/jobs", json={"destination": {"file": "all.ndjson"}, "batchSize": 50}
        )
        assert answer.status_code == 201, answer.text
        job = finished(api, answer.json()["id"])
        assert job["status"] == "SUCCEEDED", job
        assert job["progress"]["exported"] == USERS + 1  # and the worker's probe profile
        assert job["progress"]["estimatedTotal"] == USERS + 1
        assert job["progress"]["fraction"] == 1.0
        assert any(j["id"] == job["id"] for j in api.get("/export/jobs").json()["records"])
        metrics = api.get("/metrics").text
        assert 'traitflow_export_profiles_total{destination="file"} 601.0' in metrics
        assert 'traitflow_export_jobs_total{outcome="succeeded"} 1.0' in metrics
    path = exported.file("all.ndjson")
    assert_each_profile_once(exported, path)
    expected = batch_views(exported.settings, exported.events)
    served = {view["id"]: view for view in map(orjson.loads, lines_of(path))}
    for user in exported.users:
        for part in ("attributes", "traits", "_audiences", "identities"):
            assert served[user][part] == expected[user][part], (user, part)


def test_an_audience_exported_to_a_topic_is_its_members_keyed_by_id(exported: Exported) -> None:
    topic = f"{exported.settings.app_id}-big-spenders"
    body = {
        "schema": {"name": "_xdm.context.profile"},
        "filter": {"segments": [{"segmentId": "big_spenders"}]},
        "destination": {"topic": topic},
        "rate": 5000,
    }
    with api_client(exported, "api-topic") as api:
        answer = api.post("/export/jobs", json=body)
        assert answer.status_code == 201, answer.text
        job = finished(api, answer.json()["id"])
    assert job["status"] == "SUCCEEDED", job
    members = {
        pid: view
        for pid, view in exported.views().items()
        if orjson.loads(view).get("_audiences", {}).get("big_spenders") is True
    }
    expected = batch_views(exported.settings, exported.events)
    assert set(members) == {u for u in exported.users if expected[u]["_audiences"]["big_spenders"]}
    assert 0 < len(members) < USERS
    records = asyncio.run(read_topic(exported.settings, topic))
    assert job["progress"]["exported"] == len(members) == len(records)
    assert {r.key.decode(): r.value for r in records if r.key} == members
    assert all(dict(r.headers)["traitflow.export.job"] == job["id"].encode() for r in records)


def test_bad_requests_are_4xx_json_and_a_cancel_stops_a_job(exported: Exported) -> None:
    reader = create_key(exported.settings, "exports-reader", collections=["users"])
    with api_client(exported, "api-bad") as api:
        refused = {
            "no destination": ({}, 400),
            "two destinations": ({"destination": {"file": "a", "topic": "b"}}, 400),
            "a path": ({"destination": {"file": "../x.ndjson"}}, 400),
            "unknown audience": (
                {"destination": {"file": "x"}, "filter": {"segments": [{"segmentId": "no"}]}},
                400,
            ),
            "unknown schema": (
                {"destination": {"file": "x"}, "schema": {"name": "_xdm.context.nope"}},
                400,
            ),
            "a zero rate": ({"destination": {"file": "x"}, "rate": 0}, 400),
            "an unknown key": ({"destination": {"file": "x"}, "fields": "a"}, 400),
        }
        for what, (body, status) in refused.items():
            answer = api.post("/export/jobs", json=body)
            assert answer.status_code == status, (what, answer.text)
            assert "error" in answer.json(), what
        assert api.get("/export/jobs/nothex").status_code == 400
        assert api.get("/export/jobs/0123456789ab").status_code == 404
        assert api.delete("/export/jobs/0123456789ab").status_code == 404
        as_reader = {"Authorization": f"Bearer {reader}"}
        assert api.get("/export/jobs", headers=as_reader).status_code == 403
        slow = {"destination": {"file": "slow.ndjson"}, "rate": 20, "batchSize": 5}
        job_id = api.post("/export/jobs", json=slow).json()["id"]
        again = api.post("/export/jobs", json=slow)
        assert again.status_code == 409, again.text  # the file is written by a running job
        wait_until(lambda: exported.file("slow.ndjson").exists(), what="the slow job to start")
        assert api.delete(f"/export/jobs/{job_id}").status_code == 204
        assert finished(api, job_id)["status"] == "CANCELLED"
        assert api.delete(f"/export/jobs/{job_id}").status_code == 409
        exists = api.post("/export/jobs", json=slow)
        assert exists.status_code == 409, exists.text  # the file exists


def cli(exported: Exported, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "traitflow", "export", *args],
        env=exported.settings.child_env(),
        cwd=ROOT,
        start_new_session=True,
        **popen,
    )


def killed_mid_way(exported: Exported, name: str) -> str:
    """Start a slow `traitflow export start` and kill it -9 once it has exported a
    quarter of the profiles; the job's id."""
    started = cli(
        exported, "start", "--file", name, "--rate", "300", "--batch", "20",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def quarter_done() -> str | None:
            job_id = exported.newest_job()
            if job_id is None or exported.job(job_id)["spec"].find(name.encode()) < 0:
                return None
            checkpoint = orjson.loads(exported.job(job_id)["checkpoint"])
            return job_id if checkpoint["exported"] >= USERS // 4 else None

        job_id: str = wait_until(quarter_done, timeout=30, what="the export to get a quarter in")
        assert started.poll() is None, "the export ended before it was killed"
    finally:
        os.killpg(started.pid, signal.SIGKILL)
        started.wait(timeout=10)
    job = exported.job(job_id)
    assert job["status"] == b"PROCESSING"
    assert 0 < orjson.loads(job["checkpoint"])["exported"] < USERS
    return job_id


def resume(exported: Exported, job_id: str) -> subprocess.CompletedProcess[bytes]:
    """`traitflow export resume`, again while the dead runner's lease lasts."""
    deadline = time.monotonic() + 20
    while True:
        done = cli(exported, "resume", job_id, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = done.communicate(timeout=60)
        result = subprocess.CompletedProcess(done.args, done.returncode, out, err)
        if b"another runner holds it" not in err or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_a_cli_export_killed_mid_way_resumes_with_no_profile_missing_or_twice(
    exported: Exported,
) -> None:
    job_id = killed_mid_way(exported, "killed.ndjson")
    # what a kill between a round's write and its checkpoint leaves (the kill above
    # rarely lands there): lines past the saved length, the last one torn
    path = exported.file("killed.ndjson")
    saved = orjson.loads(exported.job(job_id)["checkpoint"])["file_bytes"]
    assert path.stat().st_size >= saved
    with path.open("ab") as unsaved:
        unsaved.write(b"\n".join(lines_of(path)[:3]) + b'\n{"id":"torn')
    done = resume(exported, job_id)
    assert done.returncode == 0, done.stderr.decode()
    assert b"SUCCEEDED" in done.stdout
    assert_each_profile_once(exported, path)
    assert int(exported.job(job_id)["runs"]) == 2

    # a file changed under a job fails it, saying so; a later resume does not write
    job_id = killed_mid_way(exported, "changed.ndjson")
    exported.file("changed.ndjson").write_bytes(b"")
    failed = resume(exported, job_id)
    assert failed.returncode == 1
    assert b"DestinationChanged" in failed.stdout, failed.stdout
    assert exported.job(job_id)["status"] == b"FAILED"
    assert exported.file("changed.ndjson").read_bytes() == b""


def test_an_api_process_takes_over_a_job_whose_runner_was_killed(exported: Exported) -> None:
    job_id = killed_mid_way(exported, "taken-over.ndjson")
    with api_client(exported, "api-takeover") as api:
        job = finished(api, job_id)
        metrics = api.get("/metrics").text
    assert job["status"] == "SUCCEEDED", job
    assert job["runs"] == 2
    assert "traitflow_export_takeovers_total 1.0" in metrics
    assert_each_profile_once(exported, exported.file("taken-over.ndjson"))
