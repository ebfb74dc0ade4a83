"""docker-compose.yml must agree with the code: env names, hosts, ports, health checks."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from traitflow.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"][service]["environment"].items()}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_environ(os.environ)


def test_stack_has_the_four_services_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "worker", "api"}
    for name in ("kafka", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_worker_and_api_are_built_from_one_dockerfile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["build"] == services["api"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("attributes", "streams", "api", "traitflow", "examples"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert services["worker"]["command"][:2] == ["traitflow", "worker"]
    assert services["api"]["command"][:2] == ["traitflow", "api"]


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


@pytest.mark.parametrize("service", ["worker", "api"])
def test_env_names_are_real_settings(compose: dict[str, Any], service: str) -> None:
    fields = {f"TRAITFLOW_{name.upper()}" for name in Settings.model_fields}
    assert set(_env(compose, service)) <= fields


@pytest.mark.parametrize("service", ["worker", "api"])
def test_env_points_at_the_stack(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_from(_env(compose, service), monkeypatch)
    kafka = compose["services"]["kafka"]["environment"]
    internal = next(
        listener.removeprefix("INTERNAL://")
        for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if listener.startswith("INTERNAL://")
    )
    assert settings.kafka_bootstrap == internal
    assert settings.redis_host_port == ("redis", 6379)
    assert settings.rules_path == Path("/app/examples/rules.yaml")
    assert (ROOT / "examples" / settings.rules_path.name).exists()
    assert settings.topic_partitions == kafka["KAFKA_NUM_PARTITIONS"]


def test_api_port_is_published(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(_env(compose, "api"), monkeypatch)
    published = [p.rsplit(":", 2) for p in compose["services"]["api"]["ports"]]
    assert any(int(container) == settings.api_port for *_, container in published)


def test_external_kafka_listener_is_published(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    external = next(
        listener
        for listener in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if listener.startswith("EXTERNAL://")
    )
    port = external.rsplit(":", 1)[1]
    assert any(p.endswith(f":{port}:{port}") for p in kafka["ports"])


def test_redis_requires_the_password_the_services_connect_with(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    required = command[command.index("--requirepass") + 1]
    assert required.startswith("${TRAITFLOW_REDIS_PASSWORD:?")  # the operator's, never a default
    assert redis["environment"]["REDISCLI_AUTH"] == required  # what the health check sends
    for service in ("worker", "api"):
        env = _env(compose, service)
        assert env["TRAITFLOW_REDIS_PASSWORD"] == required
        settings = _settings_from(env, monkeypatch)
        assert settings.redis_password is not None
        assert settings.redis_password.get_secret_value() == required


def _jaas_users(jaas: str) -> dict[str, str]:
    """user_NAME="password" entries of a PlainLoginModule's JAAS line: who may log in."""
    return dict(re.findall(r'user_(\w+)="([^"]*)"', jaas))


@pytest.mark.parametrize("service", ["worker", "api"])
def test_kafka_accepts_the_credentials_the_services_log_in_with(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    protocols = dict(
        pair.split(":") for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    settings = _settings_from(_env(compose, service), monkeypatch)
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"
    assert settings.kafka_sasl_mechanism in kafka["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    password = _env(compose, service)["TRAITFLOW_KAFKA_SASL_PASSWORD"]
    assert password.startswith("${TRAITFLOW_KAFKA_SASL_PASSWORD:?")  # never a default
    for listener in ("INTERNAL", "EXTERNAL"):  # the services' and the host's
        assert protocols[listener] == settings.kafka_security_protocol
        users = _jaas_users(kafka[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"])
        assert users[settings.kafka_sasl_username or ""] == password


def test_the_broker_logs_in_to_itself_as_a_user_it_accepts(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    jaas = kafka["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
    own = dict(re.findall(r'\b(username|password)="([^"]*)"', jaas))
    assert _jaas_users(jaas)[own["username"]] == own["password"]
    assert kafka["HEALTH_PASSWORD"] == own["password"]  # what the health check sends
