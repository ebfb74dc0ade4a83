"""`traitflow redis copy-keys`, with real processes: a deployment on a single Redis
(keys `tf...:`) moves to the local Redis Cluster (keys `{tf...}:`). A real worker
writes a profile and its API serves it; both stop; the command copies every key; an
API on the cluster then serves the same profile with the same API key (copied too). A
second run overwrites the first (an interrupted copy is run again), and a source that
is being written to is refused."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, wait_until
from tests.integration.stitching_support import comparable, event, person_oracle
from tests.integration.test_redis_cluster import person_event
from tests.integration.test_redis_security import _pipeline
from tests.integration.workers import ROOT, running_api, start_worker
from traitflow.config import Settings
from traitflow.redis_client import RedisTarget, sync_client

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def _profile(url: str, key: str, user: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=5.0) as http:
        answer = http.get(f"/v1/collections/users/records/user_id/{user}")
        return answer.json() if answer.status_code == 200 else None


def _copy(target: Settings, source: Settings, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The command, given the source's URL without its password and the password in a
    file, run with the target's settings."""
    found = RedisTarget.of(source)
    secret = tmp_path / "source-password"
    secret.write_text(found.credentials[1] or "")
    parts = urlsplit(found.bare_url)
    return subprocess.run(
        [
            sys.executable, "-m", "traitflow", "redis", "copy-keys",
            "--from", f"redis://{parts.netloc}{parts.path}",
            "--from-password-file", str(secret), "--batch", "7",
        ],
        env=target.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_a_single_redis_deployment_moves_to_the_cluster(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"tfm-{uuid.uuid4().hex[:6]}"
    single = settings.isolated(name, home=tmp_path)
    user = f"u-{uuid.uuid4().hex[:8]}"
    with _pipeline(single) as (url, key):
        Publisher(single, next(iter(single.sources)))(
            [{"type": "identify", "userId": user, "traits": {"plan": "pro"}}]
        )
        before = wait_until(lambda: _profile(url, key, user), timeout=30, what="the profile")
    assert before["traits"]["plan"] == "pro"

    moved = settings.isolated(name, redis_url=cluster.url, redis_cluster=True, home=tmp_path)
    assert moved.key_prefix == "{" + name + "}"
    done = _copy(moved, single, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: the counts match" in done.stdout
    assert (RedisTarget.of(single).credentials[1] or "-") not in done.stdout + done.stderr
    source = sync_client(single)
    try:
        count = sum(1 for _ in source.scan_iter(match=f"{name}:*", count=100))
    finally:
        source.close()
    assert f"copied {count:,} keys" in done.stdout
    assert count > 5  # the profile's keys, the API key, the worker's checkpoints...

    # as after an interruption: run again, before anything runs on the target
    again = _copy(moved, single, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"copied {count:,} keys" in again.stdout

    with running_api(moved, "api") as url:
        after = _profile(url, key, user)  # the API key was copied with the rest
    assert after == before


def test_a_source_being_written_to_is_refused(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"tfw-{uuid.uuid4().hex[:6]}"
    single = settings.isolated(name, home=tmp_path)
    moved = settings.isolated(name, redis_url=cluster.url, redis_cluster=True, home=tmp_path)
    stop = threading.Event()
    writer = sync_client(single)

    def write() -> None:  # a worker still committing
        while not stop.is_set():
            writer.set(f"{name}:busy", uuid.uuid4().hex)
            stop.wait(0.05)

    busy = threading.Thread(target=write)
    busy.start()
    try:
        refused = _copy(moved, single, tmp_path)
    finally:
        stop.set()
        busy.join()
        writer.delete(f"{name}:busy")
        writer.close()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "stop every traitflow worker and API" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_single_redis_deployment_moves_to_the_spread_layout(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    """People browse anonymously, log in (a merge), buy, on a single Redis; the copy
    places every key by what it names. On the spread layout the API then serves every
    identity the same profile, and a worker there goes on: a producer's retry of an
    applied messageId is still recognised (the dedupe sets were split by messageId),
    and new events land on the copied profiles: every identity ends on the batch
    answer."""
    name = f"tfp-{uuid.uuid4().hex[:6]}"
    single = settings.isolated(name, home=tmp_path / "single")
    moved = settings.isolated(
        name,
        redis_url=cluster.url,
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=32,
        export_in_api=False,
        source_jobs_in_api=False,
        home=tmp_path / "spread",
    )
    rng = random.Random(11)
    people = [f"mp-{p}" for p in range(12)]
    everyone: dict[str, list[Any]] = {u: [] for u in people}

    def identities(user: str) -> list[tuple[str, str]]:
        return [("user_id", user), ("email", f"{user}@example.com"), ("anonymous_id", f"a-{user}")]

    def send(target: Settings, make: Any) -> None:
        batch = []
        for user in people:
            everyone[user].append(make(user, len(everyone[user])))
            batch.append(everyone[user][-1])
        Publisher(target, next(iter(target.sources)))(batch)

    def browse(user: str, n: int) -> Any:
        return event(f"{user}-{n}", 600 - n / 10, anonymousId=f"a-{user}")

    def login(user: str, n: int) -> Any:
        return event(
            f"{user}-{n}", 600 - n / 10, "identify", traits={"email": f"{user}@example.com"},
            userId=user, anonymousId=f"a-{user}",
        )  # fmt: skip

    def served(url: str, key: str, asked: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=5.0) as http:
            found = {}
            for kind, value in asked:
                answer = http.get(f"/v1/collections/users/records/{kind}/{value}")
                assert answer.status_code in (200, 404), answer.text
                found[(kind, value)] = answer.json() if answer.status_code == 200 else None
            return found

    def every_identity(url: str, key: str) -> dict[tuple[str, str], Any]:
        return served(url, key, [i for u in people for i in identities(u)])

    def applied_all(url: str, key: str) -> dict[tuple[str, str], Any] | None:
        """Every identity's profile once each user's has every event; else None, after
        a pause (the polls stay within the key's rate limit)."""
        users = served(url, key, [("user_id", u) for u in people])
        if all((v := users[("user_id", u)]) and v["version"] == len(everyone[u]) for u in people):
            return every_identity(url, key)
        time.sleep(0.5)
        return None

    with _pipeline(single) as (url, key):
        for make in (browse, browse, login, *[lambda u, n: person_event(rng, u, n)] * 2):
            send(single, make)
        before = wait_until(lambda: applied_all(url, key), timeout=60, what="every event")
    assert all(view is not None for view in before.values())

    done = _copy(moved, single, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: the counts match" in done.stdout
    profiles = len(people) + 1  # and the probe `_pipeline` waits for
    assert f"{profiles:,} profiles under {name}:" in done.stdout

    with running_api(moved, "api") as url:
        assert every_identity(url, key) == before

    retried = {u: everyone[u][-1] for u in people}  # a producer's retry: sent again
    Publisher(moved, next(iter(moved.sources)))(list(retried.values()))
    worker = start_worker(moved, "worker")
    try:
        send(moved, lambda u, n: person_event(rng, u, n))
        with running_api(moved, "api-after") as url:
            after = wait_until(lambda: applied_all(url, key), timeout=90, what="the new events")
    finally:
        worker.stop()
    for user in people:
        want = person_oracle(moved, everyone[user], user)
        for identity in identities(user):
            assert comparable(after[identity]) == want, identity
