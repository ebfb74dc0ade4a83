"""TRAITFLOW_REDIS_CLUSTER: the prefix becomes a hash tag, and every connection built
from the settings (`traitflow.redis_client`) goes through `traitflow.redis_cluster`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from traitflow.config import Settings
from traitflow.redis_client import RedisTarget, async_client, resp_client
from traitflow.redis_cluster import ClusterRespClient, SlotOwnerConnection

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
    with pytest.raises(ValidationError, match=r"redis://host:port"):  # no TLS there yet
        Settings(redis_cluster=True, redis_url="rediss://127.0.0.1:7000/0")
