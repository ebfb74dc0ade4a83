"""`traitflow redis copy-keys`, with real processes: a deployment on a single Redis
(keys `tf...:`) moves to the local Redis Cluster (keys `{tf...}:`). A real worker
writes a profile and its API serves it; both stop; the command copies every key; an
API on the cluster then serves the same profile with the same API key (copied too). A
second run overwrites the first (an interrupted copy is run again), and a source that
is being written to is refused."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, wait_until
from tests.integration.test_redis_security import _pipeline
from tests.integration.workers import ROOT, running_api
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
