"""An ACL user limited to traitflow's keys, on the local 3-master Redis Cluster, with
both layouts: a real worker and API run as that user and serve a profile, no node's
`ACL LOG` shows anything refused but the start check's `CONFIG GET`, and a key outside
the patterns is refused. The patterns are the README's ("Secured Redis"): on a cluster
the prefix is a hash tag, `{tf}`, and the spread layout adds its buckets' tags
`{tf.bN}`. ACLs are per node: the user is made on every master, as an operator must
(or through an ACL file each node loads)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from tests.integration.cluster import MASTERS, LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.test_redis_security import ACL_COMMANDS
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def key_patterns(prefix: str, layout: str) -> list[str]:
    """The README's key patterns for a cluster prefix (`{tf}`) and layout."""
    base = prefix.strip("{}")
    patterns = ["~{" + base + "}:*"]
    if layout == "spread":
        patterns.append("~{" + base + ".b*}:*")
    return patterns


@pytest.fixture
def acl_user(cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """A user name and password; its rules are set per test, on every master."""
    name, password = f"tf-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    yield name, password
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            client.execute_command("ACL", "DELUSER", name)  # type: ignore[no-untyped-call]
        finally:
            client.close()


@pytest.mark.parametrize("layout", ["tag", "spread"])
def test_an_acl_user_limited_to_the_prefixs_tags_runs_the_worker_and_the_api(
    settings: Settings,
    cluster: LocalCluster,
    acl_user: tuple[str, str],
    tmp_path: Path,
    layout: str,
) -> None:
    name, password = acl_user
    own = settings.isolated(
        f"acl-{uuid.uuid4().hex[:6]}",
        redis_url=cluster.url,
        redis_cluster=True,
        redis_layout=layout,
        redis_buckets=16,
        redis_username=name,
        redis_password=password,
        export_in_api=layout != "spread",
        source_jobs_in_api=layout != "spread",
        home=tmp_path,
    )
    rules = ["on", f">{password}", "resetkeys", *key_patterns(own.key_prefix, layout)]
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            client.execute_command("ACL", "SETUSER", name, *rules, "resetchannels", *ACL_COMMANDS)  # type: ignore[no-untyped-call]
            client.acl_log_reset()
        finally:
            client.close()

    worker = start_worker(own, "worker")
    try:
        token = create_key(own, "acl-admin", admin=True)
        user = f"u-{uuid.uuid4().hex[:8]}"
        Publisher(own, next(iter(own.sources)))(
            [
                {"type": "identify", "userId": user, "traits": {"plan": "pro"}},
                {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
            ]
        )
        with (
            running_api(own, "api") as base,
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http,
        ):

            def served(kind: str, value: str) -> Any:
                assert alive(worker), "the worker stopped"
                answer = http.get(f"/v1/collections/users/records/{kind}/{value}")
                assert answer.status_code in (200, 404), answer.text
                return answer.json() if answer.status_code == 200 else None

            def both_applied() -> Any:
                found = served("user_id", user)
                return found if found and found.get("version") == 2 else None

            profile = wait_until(both_applied, timeout=90, what="the profile")
            by_email = served("email", f"{user}@example.com")
    finally:
        worker.stop()

    assert profile["traits"]["plan"] == "pro"
    assert by_email == profile
    refused: set[str] = set()
    for index in range(MASTERS):
        client = cluster.client(index)
        try:
            entries = cast("list[dict[str, Any]]", client.acl_log())
        finally:
            client.close()
        refused |= {str(e["object"]) for e in entries if e["username"] == name}
    assert refused <= {"config|get"}, refused
    outside = RedisCluster.from_url(cluster.url, username=name, password=password)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            outside.set("outside-the-prefix", b"x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            outside.get(f"{{{settings.key_prefix.strip('{}')}}}:s:user:anyone")
    finally:
        outside.close()
