"""TRAITFLOW_REDIS_LAYOUT=spread: the settings it needs, and what it refuses at start
(docs/redis-cluster.md, "Status of option B")."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import profile_store
from streams.spread_worker import spread_profiles
from traitflow.config import Settings
from traitflow.resp import Address, RespClient
from traitflow.spread_plan import SpreadUnsupported

URL = "redis://127.0.0.1:7000/0"


def cluster(**changes: Any) -> Settings:
    return Settings(redis_url=URL, redis_cluster=True, **changes)


def test_the_spread_layout_needs_a_cluster_and_defaults_to_the_tag() -> None:
    assert Settings().redis_layout == "tag"
    with pytest.raises(ValueError, match="TRAITFLOW_REDIS_CLUSTER=true"):
        Settings(redis_layout="spread")
    settings = cluster(redis_layout="spread", redis_buckets=64)
    assert settings.key_prefix == "{tf}"


def test_the_worker_refuses_what_the_spread_layout_cannot_do_yet() -> None:
    assert spread_profiles(cluster()) is None
    synced = cluster(redis_layout="spread", redis_sync="disk")
    with pytest.raises(SpreadUnsupported, match="TRAITFLOW_REDIS_SYNC=disk"):
        spread_profiles(synced)


def test_the_api_refuses_jobs_it_cannot_run_on_the_spread_layout() -> None:
    reads = RespClient(Address(host="127.0.0.1", port=7000), 1.0)
    spread = cluster(redis_layout="spread")
    with pytest.raises(SpreadUnsupported, match="TRAITFLOW_EXPORT_IN_API=false"):
        profile_store(spread, reads)


def test_the_workers_store_takes_the_claims_lease_from_the_settings() -> None:
    spread = spread_profiles(cluster(redis_layout="spread", redis_claim_lease_s=2.5))
    assert spread is not None
    assert spread.lease_ms == 2500


def test_the_cli_commands_that_scan_profiles_refuse_the_spread_layout() -> None:
    from typer.testing import CliRunner

    from traitflow.cli import app

    env = {
        "TRAITFLOW_REDIS_URL": URL,
        "TRAITFLOW_REDIS_CLUSTER": "true",
        "TRAITFLOW_REDIS_LAYOUT": "spread",
    }
    commands = (["export", "list"], ["profiles", "recount", "--workers-stopped"])
    for args in commands:
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code != 0, (args, result.output)
        assert "TRAITFLOW_REDIS_LAYOUT=spread" in result.output, args
