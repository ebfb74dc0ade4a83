"""TRAITFLOW_REDIS_CLUSTER: the prefix becomes a hash tag, and every connection built
from the settings (`traitflow.redis_client`) goes through `traitflow.redis_cluster`."""

from __future__ import annotations

import asyncio

import pytest
import redis
from pydantic import ValidationError
from redis.asyncio.connection import SSLConnection
from redis.backoff import NoBackoff

from traitflow.config import Settings
from traitflow.redis_client import RedisTarget, async_client, resp_client
from traitflow.redis_cluster import (
    REDIRECT_RETRIES,
    ClusterRespClient,
    SlotOwnerConnection,
    SlotOwnerSSLConnection,
    cluster_client,
)
from traitflow.redis_cluster_access import ClusterAccessRefused, RedirectRetry, tls_options

CLUSTER = "redis://127.0.0.1:7000/0"


def test_the_prefix_becomes_a_hash_tag_and_children_keep_it() -> None:
    settings = Settings(redis_cluster=True, redis_url=CLUSTER)
    assert settings.key_prefix == "{tf}"
    copy = settings.isolated("tftest-1")
    assert copy.key_prefix == "{tftest-1}"
    env = copy.as_env()
    assert (env["TRAITFLOW_KEY_PREFIX"], env["TRAITFLOW_REDIS_CLUSTER"]) == ("{tftest-1}", "true")
    child = Settings.from_environ(env)
    assert (child.key_prefix, child.redis_cluster) == ("{tftest-1}", True)


def test_a_hash_tag_without_a_cluster_is_refused() -> None:
    assert Settings().key_prefix == "tf"
    with pytest.raises(ValidationError, match="TRAITFLOW_REDIS_CLUSTER"):
        Settings(key_prefix="{tf}")


def test_every_client_made_from_the_settings_follows_the_slot() -> None:
    settings = Settings(redis_cluster=True, redis_url=CLUSTER)
    assert RedisTarget.of(settings).cluster_tag == "{tf}"
    assert RedisTarget.of(Settings()).cluster_tag is None
    client = async_client(settings, decode_responses=False)
    assert client.connection_pool.connection_class is SlotOwnerConnection
    assert isinstance(resp_client(settings), ClusterRespClient)
    with pytest.raises(ValidationError, match=r"redis://host:port"):  # a node, not a socket
        Settings(redis_cluster=True, redis_url="unix:///run/redis.sock")


def test_a_rediss_url_makes_every_cluster_client_use_tls() -> None:
    """The worker's connections, the slot map's and the API's take the same TLS options
    as single-node mode (`RedisTarget.redis_py_kwargs`, `RedisTarget.address`)."""
    settings = Settings(
        redis_cluster=True, redis_url="rediss://127.0.0.1:7000/0", redis_ssl_check_hostname=False
    )
    client = async_client(settings, decode_responses=False)
    pool = client.connection_pool
    assert pool.connection_class is SlotOwnerSSLConnection
    assert issubclass(SlotOwnerSSLConnection, SSLConnection)
    assert pool.connection_kwargs["ssl_check_hostname"] is False
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    reads = resp_client(settings)
    assert isinstance(reads, ClusterRespClient)
    assert reads.address.tls
    assert reads.address.ssl_check_hostname is False
    options = RedisTarget.of(settings).redis_py_kwargs()
    assert tls_options("rediss://h:1/0", options) == {"ssl": True} | {
        k: v for k, v in options.items() if k.startswith("ssl_")
    }
    assert tls_options("redis://h:1/0", options) == {}
    with pytest.raises(ValueError, match="rediss://"):
        cluster_client("unix:///run/redis.sock", "{tf}")


def test_a_refused_handshake_or_login_is_not_tried_again_but_a_lost_connection_is() -> None:
    """REDIRECT_RETRIES would retry a wrong CA for a minute: it fails at once, as in
    single-node mode, with the refusal's words (what `access_problem` reads)."""
    retry = RedirectRetry(NoBackoff(), REDIRECT_RETRIES)
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise redis.ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    async def nothing(error: Exception) -> None:
        return None

    with pytest.raises(ClusterAccessRefused, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(retry.call_with_retry(refused, nothing))
    assert len(calls) == 1

    async def lost_twice() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise redis.ConnectionError("Connection closed by server.")
        return "ok"

    assert asyncio.run(retry.call_with_retry(lost_twice, nothing)) == "ok"
    assert len(calls) == 4
