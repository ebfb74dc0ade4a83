"""TRAITFLOW_REDIS_CLUSTER with a rediss:// URL, on a local 3-master cluster that
speaks TLS only (`port 0`, `tls-cluster`, `tls-replication`), requires a client
certificate and a password (`tests.integration.cluster.ClusterTls`, certificates made
here as test_redis_security makes them).

Every cluster client must connect as single-node mode does: the worker's redis-py
connections and its slot map (`CLUSTER SLOTS` of the URL's node), the API's
`ClusterRespClient`, the blocking client of the start checks and the CLI. A real worker
and API serve a profile through it; a wrong CA is a clear refusal naming the setting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import ClusterTls, LocalCluster, cluster_possible
from tests.integration.test_redis_security import (
    PASSWORD,
    Certificates,
    _assert_refused,
    _pipeline,
    _served_profile,
    _traitflow,
    certificates,
    tls_settings,
)
from traitflow.config import Settings
from traitflow.redis_client import resp_client, sync_client
from traitflow.resp import RespConnectionError
from traitflow.services import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]

__all__ = ["certificates"]  # the module's fixture, used here by name


@pytest.fixture(scope="module")
def tls_cluster(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    tls = ClusterTls(certificates.ca, certificates.server, certificates.client)
    started = LocalCluster(tmp_path_factory.mktemp("tls-cluster"), tls=tls, password=PASSWORD)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def _cluster_settings(
    settings: Settings,
    cluster: LocalCluster,
    certificates: Certificates,
    tmp_path: Path,
    **changes: Any,
) -> Settings:
    return tls_settings(
        settings, cluster.url, certificates, tmp_path, **({"redis_cluster": True} | changes)
    )


def test_the_nodes_speak_tls_only(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.url.startswith("rediss://")
    client = tls_cluster.client(0)
    try:
        assert "cluster_state:ok" in client.execute_command("CLUSTER", "INFO").decode()  # type: ignore[no-untyped-call]
    finally:
        client.close()


def test_a_worker_and_the_api_serve_a_profile_through_a_tls_cluster(
    settings: Settings, tls_cluster: LocalCluster, certificates: Certificates, tmp_path: Path
) -> None:
    own = _cluster_settings(settings, tls_cluster, certificates, tmp_path)
    assert own.key_prefix.startswith("{")
    with _pipeline(own) as (url, key):
        profile = _served_profile(own, url, key)
    assert profile["traits"]["plan"] == "pro"
    # the blocking client (start checks, CLI) reaches the slot's owner over TLS too
    client = sync_client(own)
    try:
        assert client.dbsize() > 0
        assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(certificates.ca)
    finally:
        client.close()


def test_a_wrong_ca_is_a_clear_refusal_in_cluster_mode(
    settings: Settings, tls_cluster: LocalCluster, certificates: Certificates, tmp_path: Path
) -> None:
    wrong = _cluster_settings(
        settings, tls_cluster, certificates, tmp_path, redis_ssl_ca_file=certificates.other_ca
    )
    for command in (["worker", "--processes", "1"], ["api", "--port", str(free_port())]):
        _assert_refused(_traitflow(wrong, *command), "TRAITFLOW_REDIS_SSL_CA_FILE")
    _assert_refused(_traitflow(wrong, "keys", "list"), "TRAITFLOW_REDIS_SSL_CA_FILE")

    async def ping() -> Any:
        client = resp_client(wrong, timeout_s=3.0)
        try:
            return await client.call("PING")
        finally:
            await client.close()

    # the API's client finds no node it trusts: a lost connection (a 503), saying why
    with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(ping())
