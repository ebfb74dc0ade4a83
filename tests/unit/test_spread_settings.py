"""TRAITFLOW_REDIS_LAYOUT=spread: the settings it needs, and what it refuses at start
(docs/redis-cluster.md, "Status of option B")."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import profile_store
from api.spread_store import ChargedSpreadStore
from streams.spread_worker import durability, spread_profiles
from traitflow.config import Settings
from traitflow.durability import DurabilityWait
from traitflow.resp import Address, RespClient
from traitflow.source_jobs import RedisSourceJobs
from traitflow.spread_durability import SpreadDurabilityWait
from traitflow.spread_source_jobs import SpreadSourceJobs, source_job_store

URL = "redis://127.0.0.1:7000/0"


def cluster(**changes: Any) -> Settings:
    return Settings(redis_url=URL, redis_cluster=True, **changes)


def test_the_spread_layout_needs_a_cluster_and_defaults_to_the_tag() -> None:
    assert Settings().redis_layout == "tag"
    with pytest.raises(ValueError, match="TRAITFLOW_REDIS_CLUSTER=true"):
        Settings(redis_layout="spread")
    settings = cluster(redis_layout="spread", redis_buckets=64)
    assert settings.key_prefix == "{tf}"


def test_the_worker_has_a_spread_store_on_the_spread_layout_only() -> None:
    assert spread_profiles(cluster()) is None
    assert spread_profiles(cluster(redis_layout="spread", redis_sync="disk")) is not None


def test_durability_waits_on_every_node_on_the_spread_layout() -> None:
    synced = cluster(redis_layout="spread", redis_sync="disk", redis_buckets=64)
    assert spread_profiles(synced) is not None
    wait = durability(synced)
    assert isinstance(wait, SpreadDurabilityWait)
    assert wait.waits
    assert wait.layout.buckets == 64
    assert isinstance(durability(cluster(redis_sync="replicas:1")), DurabilityWait)


def test_the_api_runs_export_and_source_delete_jobs_on_the_spread_layout() -> None:
    reads = RespClient(Address(host="127.0.0.1", port=7000), 1.0)
    spread = cluster(redis_layout="spread")
    assert spread.export_in_api
    assert spread.source_jobs_in_api
    assert isinstance(profile_store(spread, reads), ChargedSpreadStore)
    assert isinstance(source_job_store(spread), SpreadSourceJobs)
    assert isinstance(source_job_store(cluster()), RedisSourceJobs)


def test_the_workers_store_takes_the_claims_lease_from_the_settings() -> None:
    spread = spread_profiles(cluster(redis_layout="spread", redis_claim_lease_s=2.5))
    assert spread is not None
    assert spread.lease_ms == 2500
