"""Kafka security settings -> what every client is given (`traitflow.kafka_client`):
aiokafka's keyword arguments and Faust's credentials per protocol, the settings that
cannot work refused when they load, and the password in no repr, error or message."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import faust
import pydantic
import pytest
from aiokafka import errors
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tests.tls_support import Authority
from traitflow import kafka_client
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs, explain, faust_options, security_kwargs
from traitflow.topics import new_topics

PASSWORD = "pa55-w0rd-that-must-not-leak"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TRAITFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = Authority.make(tmp_path_factory.mktemp("pki"), "test-ca")
    client = ca.issue("traitflow-client", client=True)
    return {"ca": ca.cert, "cert": client.cert, "key": client.key}


def from_env(**variables: str) -> Settings:
    return Settings.from_environ({f"TRAITFLOW_{k.upper()}": v for k, v in variables.items()})


def sasl(protocol: str = "SASL_PLAINTEXT", mechanism: str = "SCRAM-SHA-512", **more: str) -> Any:
    return from_env(
        kafka_bootstrap="kafka-1:9096,kafka-2:9096",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="traitflow",
        kafka_sasl_password=PASSWORD,
        **more,
    )


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = from_env(kafka_bootstrap="kafka:9092")
    assert client_kwargs(settings) == {
        "bootstrap_servers": "kafka:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_options(settings) == {}


def test_ssl_trusts_the_ca_file_and_presents_the_client_certificate(pki: dict[str, Path]) -> None:
    settings = from_env(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(pki["ca"]),
        kafka_ssl_cert_file=str(pki["cert"]),
        kafka_ssl_key_file=str(pki["key"]),
    )
    kwargs = client_kwargs(settings)
    assert kwargs.keys() == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].get_ca_certs() == context.get_ca_certs()


def test_hostname_verification_can_be_turned_off_not_the_chain(pki: dict[str, Path]) -> None:
    settings = from_env(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(pki["ca"]),
        kafka_ssl_check_hostname="false",
    )
    context = security_kwargs(settings)["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_ssl_without_a_ca_file_trusts_the_system_cas() -> None:
    context = security_kwargs(from_env(kafka_security_protocol="SSL"))["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_gives_the_mechanism_and_credentials(mechanism: str) -> None:
    settings = sasl(mechanism=mechanism)
    assert client_kwargs(settings) == {
        "bootstrap_servers": "kafka-1:9096,kafka-2:9096",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "traitflow",
        "sasl_plain_password": PASSWORD,
    }
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    # what Faust hands its consumer and producer is what every other client gets
    assert credentials_to_aiokafka_auth(credentials) == security_kwargs(settings) | {
        "ssl_context": None
    }


def test_sasl_ssl_gives_both(pki: dict[str, Path]) -> None:
    settings = sasl("SASL_SSL", "SCRAM-SHA-256", kafka_ssl_ca_file=str(pki["ca"]))
    kwargs = security_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    auth = credentials_to_aiokafka_auth(faust_options(settings)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_plain_password"] == PASSWORD
    assert auth["ssl_context"].get_ca_certs() == kwargs["ssl_context"].get_ca_certs()


def test_protocol_and_mechanism_are_read_in_any_case() -> None:
    settings = sasl("sasl_ssl", "scram-sha-512")
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"


def refused(**variables: str) -> str:
    with pytest.raises(pydantic.ValidationError) as raised:
        from_env(**variables)
    return str(raised.value)


def test_sasl_without_mechanism_or_credentials_is_refused() -> None:
    message = refused(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="traitflow",
        kafka_sasl_password=PASSWORD,
    )
    assert "TRAITFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs TRAITFLOW_KAFKA_SASL_MECHANISM" in (
        message
    )
    message = refused(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    assert "needs TRAITFLOW_KAFKA_SASL_USERNAME, TRAITFLOW_KAFKA_SASL_PASSWORD" in message


def test_sasl_settings_without_a_sasl_protocol_are_refused() -> None:
    message = refused(kafka_sasl_username="traitflow", kafka_sasl_password=PASSWORD)
    assert "TRAITFLOW_KAFKA_SASL_USERNAME, TRAITFLOW_KAFKA_SASL_PASSWORD set, but" in message
    assert "is PLAINTEXT: SASL is used with SASL_PLAINTEXT or SASL_SSL only" in message


def test_an_unknown_protocol_or_mechanism_is_refused() -> None:
    assert "kafka_security_protocol" in refused(kafka_security_protocol="TLS")
    assert "kafka_sasl_mechanism" in refused(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI"
    )


def test_tls_files_without_tls_are_refused(pki: dict[str, Path]) -> None:
    message = refused(kafka_ssl_ca_file=str(pki["ca"]))
    assert "TRAITFLOW_KAFKA_SSL_CA_FILE set, but TRAITFLOW_KAFKA_SECURITY_PROTOCOL is" in message
    with pytest.raises(pydantic.ValidationError, match="TLS is used with SSL or SASL_SSL only"):
        sasl(kafka_ssl_ca_file=str(pki["ca"]))


def test_a_missing_ca_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    message = refused(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(missing))
    assert f"TRAITFLOW_KAFKA_SSL_CA_FILE: no such file: {missing}" in message


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    message = refused(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(garbage))
    assert "the Kafka TLS files do not load (TRAITFLOW_KAFKA_SSL_CA_FILE)" in message


def test_a_key_without_its_certificate_is_refused(pki: dict[str, Path]) -> None:
    message = refused(kafka_security_protocol="SSL", kafka_ssl_key_file=str(pki["key"]))
    assert "TRAITFLOW_KAFKA_SSL_KEY_FILE set without TRAITFLOW_KAFKA_SSL_CERT_FILE" in message


def test_a_certificate_with_the_wrong_key_is_refused(pki: dict[str, Path]) -> None:
    message = refused(
        kafka_security_protocol="SSL",
        kafka_ssl_cert_file=str(pki["cert"]),
        kafka_ssl_key_file=str(pki["ca"]),  # a certificate, not a key
    )
    assert "the Kafka TLS files do not load" in message


def test_more_in_sync_replicas_than_replicas_is_refused() -> None:
    message = refused(topic_replication_factor="2", topic_min_insync_replicas="3")
    assert "TRAITFLOW_TOPIC_MIN_INSYNC_REPLICAS=3 is above" in message


def test_the_password_is_in_no_repr_or_error() -> None:
    settings = sasl()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in repr(faust_options(settings)["broker_credentials"])
    assert PASSWORD not in kafka_client.describe(settings)
    # a setting refused next to the password: the error names settings, not values
    message = refused(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="traitflow",
        kafka_sasl_password=PASSWORD,
        topic_partitions="0",
    )
    assert PASSWORD not in message
    assert "topic_partitions" in message
    problem = explain(settings, errors.SaslAuthenticationFailed("invalid credentials"))
    assert PASSWORD not in problem.message


def test_a_child_process_gets_every_setting_the_password_too(pki: dict[str, Path]) -> None:
    settings = sasl(
        "SASL_SSL",
        kafka_ssl_ca_file=str(pki["ca"]),
        kafka_ssl_check_hostname="false",
        topic_replication_factor="3",
        topic_min_insync_replicas="2",
    )
    env = settings.as_env()
    assert env["TRAITFLOW_KAFKA_SASL_PASSWORD"] == PASSWORD
    assert env["TRAITFLOW_KAFKA_SSL_CA_FILE"] == str(pki["ca"])
    child = Settings.from_environ(env)
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == PASSWORD
    fields = [
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_ssl_ca_file",
        "kafka_ssl_check_hostname",
        "topic_replication_factor",
        "topic_min_insync_replicas",
    ]
    assert [getattr(child, f) for f in fields] == [getattr(settings, f) for f in fields]
    isolated = settings.isolated("run-1")
    assert client_kwargs(isolated)["sasl_plain_password"] == PASSWORD


def test_topics_get_the_brokers_defaults_unless_set() -> None:
    [plain, compacted] = new_topics(from_env(topic_partitions="6"), ["a", "b"], compacted=["b"])
    assert (plain.num_partitions, plain.replication_factor, plain.topic_configs) == (6, -1, {})
    assert compacted.replication_factor == -1
    assert compacted.topic_configs == {"cleanup.policy": "compact"}
    settings = from_env(topic_replication_factor="3", topic_min_insync_replicas="2")
    [plain, compacted] = new_topics(settings, ["a", "b"], compacted=["b"])
    assert plain.replication_factor == 3
    assert plain.topic_configs == {"min.insync.replicas": "2"}
    assert compacted.topic_configs == {"cleanup.policy": "compact", "min.insync.replicas": "2"}


def test_what_a_refusal_means_is_named() -> None:
    settings = sasl("SASL_SSL")
    refusal = explain(settings, errors.SaslAuthenticationFailed("bad"))
    assert refusal.fatal
    assert refusal.message.startswith(
        "Kafka at kafka-1:9096,kafka-2:9096 (SASL_SSL, SCRAM-SHA-512 as 'traitflow'): "
        "the broker refused the SASL credentials"
    )
    assert "TRAITFLOW_KAFKA_SASL_PASSWORD" in refusal.message
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    refusal = explain(settings, untrusted)
    assert refusal.fatal
    assert "certificate was not accepted (unable to get local issuer certificate)" in (
        refusal.message
    )
    assert "TRAITFLOW_KAFKA_SSL_CA_FILE" in refusal.message
    assert explain(settings, errors.UnsupportedSaslMechanismError("no")).fatal
    closed = explain(settings, errors.KafkaConnectionError("closed"))
    assert not closed.fatal
    assert "TRAITFLOW_KAFKA_SECURITY_PROTOCOL" in closed.message
    assert not explain(settings, ConnectionRefusedError(111, "refused")).fatal
