"""What `TRAITFLOW_REDIS_SYNC` accepts of a Redis: the decisions, without I/O (the
waits themselves run against real redis-servers in tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from traitflow.config import Settings
from traitflow.durability import FSYNC_EVERY_WRITE, Sync, config_of, fsync_problem, sync_problem
from traitflow.services import embedded_services

AOF_ON = {"aof_enabled": 1}
EVERYSEC = {"appendonly": "yes", "appendfsync": "everysec", "no-appendfsync-on-rewrite": "no"}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("none", Sync("none")), ("disk", Sync("disk")), ("replicas:2", Sync("replicas", 2))],
)
def test_the_setting_parses(text: str, parsed: Sync) -> None:
    assert Sync.parse(text) == parsed


@pytest.mark.parametrize("text", ["", "fsync", "replicas", "replicas:0", "disk:1", "none:2"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="none, disk or replicas:N"):
        Sync.parse(text)


@pytest.mark.parametrize("version", ["7.2.4", "8.0.1", "7.4.0"])
def test_disk_on_a_redis_with_waitaof_needs_only_an_aof(version: str) -> None:
    assert sync_problem("disk", {"redis_version": version}, AOF_ON, None) is None
    problem = sync_problem("disk", {"redis_version": version}, {"aof_enabled": 0}, EVERYSEC)
    assert problem is not None
    assert "set appendonly yes" in problem


@pytest.mark.parametrize("version", ["7.0.15", "6.2.14"])
def test_disk_without_waitaof_is_accepted_only_when_every_reply_follows_its_fsync(
    version: str,
) -> None:
    server = {"redis_version": version}
    assert sync_problem("disk", server, AOF_ON, dict(FSYNC_EVERY_WRITE)) is None
    problem = sync_problem("disk", server, AOF_ON, EVERYSEC)
    assert problem is not None
    assert f"Redis {version} does not have" in problem
    assert "(set appendfsync always)" in problem
    assert "replicas:1" in problem
    refused = sync_problem("disk", server, AOF_ON, None)  # managed: CONFIG renamed away
    assert refused is not None
    assert "CONFIG GET refused" in refused


def test_an_fsync_skipped_during_rewrites_or_no_aof_is_named() -> None:
    assert fsync_problem(FSYNC_EVERY_WRITE) is None
    rewrite = FSYNC_EVERY_WRITE | {"no-appendfsync-on-rewrite": "yes"}
    assert fsync_problem(rewrite) == "set no-appendfsync-on-rewrite no"
    assert fsync_problem({}) == (
        "set appendonly yes, appendfsync always, no-appendfsync-on-rewrite no"
    )


@pytest.mark.parametrize("sync", ["none", "replicas:1", "replicas:3"])
def test_none_and_replicas_ask_nothing_at_start(sync: str) -> None:
    assert sync_problem(sync, {"redis_version": "6.0.0"}, {"aof_enabled": 0}, None) is None


def test_config_replies_read_as_text_decoded_or_not() -> None:
    assert config_of({b"appendfsync": b"always", "appendonly": "yes"}) == {
        "appendfsync": "always",
        "appendonly": "yes",
    }


@pytest.mark.parametrize(("sync", "fsync"), [("none", "everysec"), ("disk", "always")])
def test_the_embedded_redis_fsyncs_every_write_when_the_worker_waits_for_the_disk(
    sync: str, fsync: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TRAITFLOW_REDIS_URL", raising=False)
    own = Settings(redis_sync=sync, home=tmp_path)  # the command makes the data directory
    (embedded,) = [s for s in embedded_services(own) if s.name == "redis"]
    command = embedded.command()
    last = len(command) - 1 - command[::-1].index("--appendfsync")  # the last one wins
    assert command[last + 1] == fsync


@pytest.mark.parametrize(
    ("storage", "engine"), [("disk", "s3://tansu/"), ("memory", "memory://tansu/")]
)
def test_the_embedded_broker_keeps_its_data_on_disk_unless_told_otherwise(
    storage: Literal["memory", "disk"], engine: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TRAITFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("TRAITFLOW_BROKER_STORAGE", raising=False)
    assert Settings(home=tmp_path).broker_storage == "disk"
    own = Settings(broker_storage=storage, home=tmp_path)
    (broker,) = [s for s in embedded_services(own) if s.name == "broker"]
    command = broker.command()
    assert command[command.index("--storage-engine") + 1] == engine
    served = command[1:3] == ["-m", "traitflow.objectstore"]
    assert served is (storage == "disk")
