from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest

from attributes.identities import DEFAULT_USER
from traitflow.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment they are given: start every test from none of ours."""
    for name in list(os.environ):
        if name.upper().startswith("TRAITFLOW_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_embedded_services() -> None:
    settings = Settings.from_environ(os.environ)
    assert settings.kafka_host_port == ("127.0.0.1", 19092)
    assert settings.redis_host_port == ("127.0.0.1", 16379)
    assert not settings.kafka_is_external
    assert not settings.redis_is_external
    assert settings.sources == {"traitflow-events": "default"}
    assert settings.collections == {"users": "user", "accounts": "account"}
    assert settings.rules_path == Path("examples/rules.yaml")


def test_kafka_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "broker-1:9093,broker-2:9094")
    settings = Settings.from_environ(os.environ)
    assert settings.kafka_bootstrap == "broker-1:9093,broker-2:9094"
    assert settings.kafka_host_port == ("broker-1", 9093)
    assert settings.kafka_is_external
    assert not settings.redis_is_external


def test_redis_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_REDIS_URL", "redis://cache.internal:6380/2")
    settings = Settings.from_environ(os.environ)
    assert settings.redis_url == "redis://cache.internal:6380/2"
    assert settings.redis_host_port == ("cache.internal", 6380)
    assert settings.redis_is_external
    assert not settings.kafka_is_external


@pytest.mark.parametrize(
    ("bootstrap", "host_port"),
    [
        ("kafka:29092", ("kafka", 29092)),
        ("kafka://kafka:29092", ("kafka", 29092)),
        (":9092", ("127.0.0.1", 9092)),
        ("10.0.0.5:9092,10.0.0.6:9092", ("10.0.0.5", 9092)),
    ],
)
def test_kafka_host_port(bootstrap: str, host_port: tuple[str, int]) -> None:
    assert Settings(kafka_bootstrap=bootstrap).kafka_host_port == host_port


@pytest.mark.parametrize(
    ("url", "host_port"),
    [
        ("redis://cache:6380/0", ("cache", 6380)),
        ("redis://cache", ("cache", 6379)),
        ("redis://:secret@cache:7000", ("cache", 7000)),
        ("rediss://user:secret@cache.example.com:6390/1", ("cache.example.com", 6390)),
        ("redis://", ("127.0.0.1", 6379)),
    ],
)
def test_redis_host_port(url: str, host_port: tuple[str, int]) -> None:
    assert Settings(redis_url=url).redis_host_port == host_port


def test_sources_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_SOURCES", '{"web-events": "web", "app-events": "app"}')
    assert Settings.from_environ(os.environ).sources == {"web-events": "web", "app-events": "app"}


def test_collections_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_COLLECTIONS", '{"people": "user", "orgs": "account"}')
    assert Settings.from_environ(os.environ).collections == {"people": "user", "orgs": "account"}


def test_scalars_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_BATCH_SIZE", "500")
    monkeypatch.setenv("TRAITFLOW_KEY_PREFIX", "tf-test.1")
    monkeypatch.setenv("TRAITFLOW_RULES_PATH", "/etc/traitflow/rules.yaml")
    monkeypatch.setenv("TRAITFLOW_STATE_CACHE_PROFILES", "0")
    settings = Settings.from_environ(os.environ)
    assert settings.batch_size == 500
    assert settings.key_prefix == "tf-test.1"
    assert settings.rules_path == Path("/etc/traitflow/rules.yaml")
    assert settings.state_cache_profiles == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRAITFLOW_SOURCES", '["traitflow-events"]'),
        ("TRAITFLOW_SOURCES", "traitflow-events"),
        ("TRAITFLOW_KEY_PREFIX", "tf:prod"),
        ("TRAITFLOW_KEY_PREFIX", ""),
        ("TRAITFLOW_BATCH_SIZE", "0"),
        ("TRAITFLOW_TOPIC_PARTITIONS", "0"),
        ("TRAITFLOW_STATE_CACHE_PROFILES", "-1"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("TRAITFLOW_").lower()):
        Settings.from_environ(os.environ)


def test_settings_are_frozen() -> None:
    settings = Settings.from_environ(os.environ)
    with pytest.raises(pydantic.ValidationError):
        settings.batch_size = 1


def test_kafka_host_without_port_uses_kafkas_default() -> None:
    assert Settings(kafka_bootstrap="kafka").kafka_host_port == ("kafka", 9092)


def test_group_timeouts_are_short_on_the_embedded_broker_and_kafka_safe_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRAITFLOW_KAFKA_BOOTSTRAP", raising=False)
    assert Settings.from_environ(os.environ).group_timeouts == (2.0, 1.0, 0.5)
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "kafka:9092")
    session, rebalance, heartbeat = Settings.from_environ(os.environ).group_timeouts
    assert 0 < rebalance <= session
    assert session >= 6.0  # Apache Kafka's default group.min.session.timeout.ms
    assert heartbeat < session / 3
    monkeypatch.setenv("TRAITFLOW_SESSION_TIMEOUT_S", "30")
    assert Settings.from_environ(os.environ).group_timeouts[0] == 30.0


def test_the_fetch_wait_is_short_on_the_embedded_broker_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tansu answers a waiting fetch only when the wait is over: it is added latency there
    monkeypatch.delenv("TRAITFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("TRAITFLOW_FETCH_WAIT_MS", raising=False)
    assert Settings.from_environ(os.environ).fetch_wait == 5
    monkeypatch.setenv("TRAITFLOW_KAFKA_BOOTSTRAP", "kafka:9092")  # Kafka answers at once
    assert Settings.from_environ(os.environ).fetch_wait == 500
    monkeypatch.setenv("TRAITFLOW_FETCH_WAIT_MS", "20")
    assert Settings.from_environ(os.environ).fetch_wait == 20


def test_as_env_gives_a_child_process_the_same_effective_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith("TRAITFLOW_"):
            monkeypatch.delenv(key)
    parent = Settings(sources={"a": "web", "b": "crm"}, topic_partitions=3)
    for key, value in parent.as_env().items():
        monkeypatch.setenv(key, value)

    child = Settings.from_environ(os.environ)

    assert child.kafka_is_external  # the child is given the broker explicitly...
    assert child.group_timeouts == parent.group_timeouts == (2.0, 1.0, 0.5)  # ...same timeouts
    assert child.fetch_wait == parent.fetch_wait == 5  # ...and the same fetch wait
    assert child.sources == {"a": "web", "b": "crm"}
    resolved = {"session_timeout_s", "rebalance_timeout_s", "heartbeat_interval_s", "fetch_wait_ms"}
    assert child.model_dump(exclude=resolved) == parent.model_dump(exclude=resolved)


def test_isolated_names_every_shared_resource_after_the_run() -> None:
    settings = Settings(sources={"events": "web"}).isolated("run-1", topic_partitions=2)
    assert settings.app_id == "run-1"
    assert settings.key_prefix == "run-1"
    assert settings.sources == {"run-1-events": "web"}
    assert settings.dead_letter_topic == "run-1-dead-letters"
    assert settings.topic_partitions == 2


def test_isolated_copies_do_not_share_the_metrics_port() -> None:
    session = Settings(worker_metrics_port=9108)
    assert session.isolated("run-2").worker_metrics_port is None
    assert session.isolated("run-3", worker_metrics_port=9109).worker_metrics_port == 9109


def test_child_env_replaces_every_traitflow_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_KEY_PREFIX", "from-the-parent")
    monkeypatch.setenv("TRAITFLOW_OBSOLETE", "x")
    monkeypatch.setenv("UNRELATED", "kept")
    env = Settings(key_prefix="mine").child_env()
    assert env["TRAITFLOW_KEY_PREFIX"] == "mine"
    assert "TRAITFLOW_OBSOLETE" not in env
    assert env["UNRELATED"] == "kept"


def test_entities_default_to_users_and_accounts() -> None:
    entities = Settings.from_environ(os.environ).entities
    assert list(entities) == ["user", "account"]
    user, account = entities["user"], entities["account"]
    assert [identity.type for identity in user.identities] == ["user_id", "email", "anonymous_id"]
    assert user.stitching
    assert user.traits_from == "identify"
    assert [identity.type for identity in account.identities] == ["account_id"]
    assert account.identities[0].paths == ["groupId", "context.groupId"]
    assert account.traits_from == "group"


def test_entities_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {
        "user": {
            "identities": [
                {"type": "customer_id", "paths": ["traits.customer_id"], "limit": 1},
                {"type": "anonymous_id", "paths": ["anonymousId"]},
            ],
            "stitching": False,
        }
    }
    monkeypatch.setenv("TRAITFLOW_ENTITIES", json.dumps(spec))
    user = Settings.from_environ(os.environ).entities["user"]
    assert [identity.type for identity in user.identities] == ["customer_id", "anonymous_id"]
    assert not user.stitching


def test_entities_declared_without_collections_are_served_as_their_plurals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    household = {"identities": [{"type": "household_id", "paths": ["traits.household"]}]}
    monkeypatch.setenv("TRAITFLOW_ENTITIES", json.dumps({"household": household}))
    assert Settings.from_environ(os.environ).collections == {"households": "household"}
    assert Settings.from_environ(os.environ, collections={"homes": "household"}).collections == {
        "homes": "household"
    }


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"entities": {}}, "entities: declare at least one"),
        ({"entities": {"User": DEFAULT_USER}}, "entities: 'User' must be lower-case letters"),
        (
            {"entities": {"user": DEFAULT_USER}, "collections": {"firms": "account"}},
            "collections: 'firms' serves entity 'account', which is not declared (entities: user)",
        ),
    ],
)
def test_entities_must_be_named_and_served_as_declared(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(problem)):
        Settings(**changes)


def test_an_isolated_copy_with_other_entities_serves_them() -> None:
    users_only = Settings().isolated("run-4", entities={"user": DEFAULT_USER})
    assert users_only.collections == {"users": "user"}
    assert list(users_only.destinations) == ["web-personalisation"]
    chosen = Settings(collections={"people": "user", "accounts": "account"})
    with pytest.raises(pydantic.ValidationError, match="'accounts' serves entity 'account'"):
        chosen.isolated("run-5", entities={"user": DEFAULT_USER})  # set by hand: kept


def test_event_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITFLOW_MAX_EVENT_BYTES", "1000")
    monkeypatch.setenv("TRAITFLOW_MAX_EVENT_DEPTH", "8")
    monkeypatch.setenv("TRAITFLOW_MAX_ID_LENGTH", "64")
    monkeypatch.setenv("TRAITFLOW_MAX_IDENTITIES_PER_EVENT", "4")
    monkeypatch.setenv("TRAITFLOW_MAX_FUTURE_SKEW_S", "60")
    limits = Settings.from_environ(os.environ).event_limits
    assert (limits.max_bytes, limits.max_depth, limits.max_id_length) == (1000, 8, 64)
    assert (limits.max_identities, limits.max_future_skew_ms) == (4, 60_000)
    monkeypatch.setenv("TRAITFLOW_MAX_FUTURE_SKEW_S", "0")
    assert Settings.from_environ(os.environ).event_limits.max_future_skew_ms is None


def test_the_default_limits_and_dedupe_window() -> None:
    settings = Settings.from_environ(os.environ)
    limits = settings.event_limits
    assert (limits.max_bytes, limits.max_depth, limits.max_id_length) == (262_144, 32, 512)
    assert limits.max_future_skew_ms == 86_400_000
    assert settings.dedupe_window_s == 7 * 86_400


@pytest.mark.parametrize("source", ["", "web:eu"])
def test_a_source_name_must_fit_redis_keys(source: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="a source name must be non-empty"):
        Settings(sources={"events": source})
