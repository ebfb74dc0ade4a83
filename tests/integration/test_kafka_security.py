"""Secured Kafka: the worker, the CLI and the API reach a broker that requires TLS
(with client certificates) and SASL, and say clearly why when it refuses them.

The broker is the embedded Tansu behind a gateway that terminates TLS and SASL
(`tests.integration.kafka_gateway`: Tansu 0.6.0 can do neither itself), so what is
tested is every traitflow client's side: the TLS handshake against a CA of the test's,
the client certificate, hostname verification on and off, SASL PLAIN, SCRAM-SHA-256
and SCRAM-SHA-512, and the refusals. A real Kafka's own SASL and TLS code is not
exercised here (README, "Secured Kafka")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import wait_until
from tests.integration.kafka_gateway import KafkaGateway, secured_broker, server_tls
from tests.integration.oracle import expected_view
from tests.integration.test_worker_kills import random_events, read_views
from tests.integration.workers import running_api, worker_log, worker_with_rules
from tests.tls_support import Authority, Issued
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs
from traitflow.services import Daemon
from traitflow.topics import ensure_topics, publish_lines, read_dead_letters, read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "traitflow", f"pw-{uuid.uuid4().hex}"


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = Authority.make(directory / "ca", "test-ca")
        self.broker = self.ca.issue("broker", hosts=("127.0.0.1",))
        #: a certificate for another name than the one clients connect to
        self.misnamed = self.ca.issue("misnamed", hosts=("kafka.internal.example",))
        self.client: Issued = self.ca.issue("traitflow-client", client=True)
        self.other_ca = Authority.make(directory / "other", "other-ca")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("kafka-pki"))


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaGateway]:
    """A broker reached only over TLS, with a client certificate, and SASL."""
    tls = server_tls(pki.broker.cert, pki.broker.key, client_ca=pki.ca.cert)
    with secured_broker(
        tmp_path_factory.mktemp("secured-broker"), tls=tls, users={USER: PASSWORD}
    ) as gateway:
        yield gateway


def sasl_ssl(pki: Pki, gateway: KafkaGateway, **changes: Any) -> dict[str, Any]:
    """Settings changes that reach `gateway` as a managed Kafka is reached."""
    return {
        "kafka_bootstrap": f"127.0.0.1:{gateway.port}",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_ca_file": pki.ca.cert,
        "kafka_ssl_cert_file": pki.client.cert,
        "kafka_ssl_key_file": pki.client.key,
    } | changes


def cli(
    settings: Settings, *arguments: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traitflow", *arguments],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_worker_cli_and_api_over_sasl_ssl_with_a_client_certificate(
    settings: Settings, secured: KafkaGateway, pki: Pki, tmp_path: Path
) -> None:
    """A worker, `traitflow produce`, an API's ingest and the dead-letter producer, all
    over SASL_SSL (SCRAM-SHA-512) with a client certificate: every profile is the batch
    answer, the bad line is a dead letter, and no log holds the password."""
    run = f"tfsecure-{uuid.uuid4().hex[:8]}"
    rules = (ROOT / "examples" / "rules.yaml").read_text()
    with worker_with_rules(settings, tmp_path, rules, run, **sasl_ssl(pki, secured)) as started:
        own = started.settings
        users = [f"{run}-{n}" for n in range(12)]
        events = random_events(run, users, 400, seed=17)
        # half by the CLI's producer, in its own process; half by publish_lines here
        lines = tmp_path / "events.jsonl"
        lines.write_bytes(b"\n".join(orjson.dumps(e) for e in events[:200]) + b"\nnot json\n")
        produced = cli(own, "produce", str(lines))
        assert produced.returncode == 0, produced.stderr
        assert "published 201 events" in produced.stdout
        started.publish(events[200:])

        # the API's ingest publisher, in its own process
        digest = hashlib.sha256(b"wk-secured").hexdigest()
        ingesting = Settings.model_validate(own.model_dump() | {"write_keys": {digest: "web"}})
        ingested = f"{run}-api"
        with running_api(ingesting, "secured-api") as url:
            auth = base64.b64encode(b"wk-secured:").decode()
            response = httpx.post(
                f"{url}/v1/identify",
                json={"userId": ingested, "traits": {"plan": "secured"}},
                headers={"Authorization": f"Basic {auth}"},
                timeout=30,
            )
        assert (response.status_code, response.json()) == (200, {"success": True})

        expected = [expected_view(own, events, user) for user in users]
        wait_until(
            lambda: asyncio.run(read_views(own, users)) == expected,
            timeout=90,
            what="every profile to be the batch answer",
        )
        [view] = wait_until(
            lambda: [v for v in asyncio.run(read_views(own, [ingested])) if v is not None],
            timeout=60,
            what="the event sent to the API",
        )
        assert view["traits"]["plan"] == "secured"

        # the dead letter went through Faust's producer, read back through the gateway
        letters = asyncio.run(read_dead_letters(own, at_least=1, wait_s=30))
        assert [value for value, _ in letters] == [b"not json"]

        assert secured.logins[(USER, "SCRAM-SHA-512")] >= 4, secured.logins
        assert PASSWORD not in worker_log(started.worker)
        assert PASSWORD not in produced.stdout + produced.stderr
        log = Daemon("secured-api", own.home / "secured-api").log_file
        assert PASSWORD not in log.read_text(errors="replace")


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_each_sasl_mechanism_publishes_and_reads(
    settings: Settings, pki: Pki, tmp_path: Path, mechanism: str
) -> None:
    """SASL_PLAINTEXT with each mechanism the settings offer: topics made with the
    admin client, records published and read back, the gateway saw the mechanism."""
    with secured_broker(tmp_path / "broker", users={USER: PASSWORD}) as gateway:
        own = settings.isolated(
            f"tfsasl-{uuid.uuid4().hex[:8]}",
            kafka_bootstrap=f"127.0.0.1:{gateway.port}",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username=USER,
            kafka_sasl_password=PASSWORD,
        )
        asyncio.run(ensure_topics(own))
        topic = next(iter(own.sources))
        asyncio.run(publish_lines(own, topic, [b'{"userId": "a"}', b'{"userId": "b"}']))
        records = asyncio.run(read_topic(own, topic))
        assert sorted(r.value for r in records) == [b'{"userId": "a"}', b'{"userId": "b"}']
        assert gateway.logins[(USER, mechanism)] >= 3
        assert not gateway.refused


def test_wrong_credentials_stop_the_worker_and_the_cli_with_a_clear_error(
    settings: Settings, secured: KafkaGateway, pki: Pki, tmp_path: Path
) -> None:
    wrong = "not-the-password"
    own = settings.isolated(
        f"tfwrong-{uuid.uuid4().hex[:8]}",
        home=tmp_path,
        **sasl_ssl(pki, secured, kafka_sasl_password=wrong),
    )
    events = tmp_path / "events.jsonl"
    events.write_text('{"userId": "u-1", "type": "identify"}\n')
    for arguments in (
        ["worker", "--processes", "1"],
        ["produce", str(events)],
        ["dead-letters", "list"],
    ):
        result = cli(own, *arguments, timeout=60)
        assert result.returncode == 1, (arguments, result.stdout, result.stderr)
        assert (
            f"error: Kafka at 127.0.0.1:{secured.port} (SASL_SSL, SCRAM-SHA-512 as "
            f"'{USER}'): the broker refused the SASL credentials"
        ) in result.stderr, result.stderr
        assert "Check TRAITFLOW_KAFKA_SASL_USERNAME, TRAITFLOW_KAFKA_SASL_PASSWORD" in (
            result.stderr
        )
        assert wrong not in result.stdout + result.stderr
    assert USER in secured.refused


def test_an_untrusted_broker_certificate_stops_the_worker_and_the_cli(
    settings: Settings, secured: KafkaGateway, pki: Pki, tmp_path: Path
) -> None:
    """A CA file that did not sign the broker's certificate: no connection, and the
    error says which setting to check."""
    own = settings.isolated(
        f"tfca-{uuid.uuid4().hex[:8]}",
        home=tmp_path,
        **sasl_ssl(pki, secured, kafka_ssl_ca_file=pki.other_ca.cert),
    )
    events = tmp_path / "events.jsonl"
    events.write_text('{"userId": "u-1", "type": "identify"}\n')
    for arguments in (
        ["worker", "--processes", "1"],
        ["produce", str(events)],
        ["dead-letters", "list"],
    ):
        result = cli(own, *arguments, timeout=60)
        assert result.returncode == 1, (arguments, result.stdout, result.stderr)
        assert "the broker's TLS certificate was not accepted (" in result.stderr, result.stderr
        assert "Check TRAITFLOW_KAFKA_SSL_CA_FILE" in result.stderr


def test_hostname_verification_on_refuses_a_misnamed_certificate_off_accepts_it(
    settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    """The broker's certificate names another host than the one clients connect to
    (signed by the trusted CA): refused with verification on, used with it off. No
    client certificate is asked for here; SSL without SASL."""
    tls = server_tls(pki.misnamed.cert, pki.misnamed.key)
    with secured_broker(tmp_path / "broker", tls=tls) as gateway:
        changes = {
            "kafka_bootstrap": f"127.0.0.1:{gateway.port}",
            "kafka_security_protocol": "SSL",
            "kafka_ssl_ca_file": pki.ca.cert,
        }
        checked = settings.isolated(f"tfhost-{uuid.uuid4().hex[:8]}", **changes)
        topic = next(iter(checked.sources))
        with pytest.raises(Exception, match="Unable to bootstrap"):
            asyncio.run(publish_lines(checked, topic, [b"{}"]))
        result = cli(checked, "produce", "/dev/null", timeout=60)
        assert result.returncode == 1
        assert "IP address mismatch" in result.stderr, result.stderr
        assert "TRAITFLOW_KAFKA_SSL_CHECK_HOSTNAME" in result.stderr

        unchecked = checked.isolated(checked.app_id, kafka_ssl_check_hostname=False)
        asyncio.run(ensure_topics(unchecked))
        assert asyncio.run(publish_lines(unchecked, topic, [b'{"userId": "a"}'])) == 1
        assert [r.value for r in asyncio.run(read_topic(unchecked, topic))] == [b'{"userId": "a"}']


def test_topics_are_created_with_the_configured_min_insync_replicas(
    settings: Settings, tmp_path: Path
) -> None:
    """`TRAITFLOW_TOPIC_MIN_INSYNC_REPLICAS` reaches the broker as the topic's config
    (Tansu keeps the configs a topic is created with; it has one replica whatever the
    factor, so the replication factor itself is checked by the unit tests only)."""
    own = settings.isolated(
        f"tfisr-{uuid.uuid4().hex[:8]}", topic_replication_factor=1, topic_min_insync_replicas=1
    )
    asyncio.run(ensure_topics(own))

    async def configs() -> dict[str, str]:
        admin = AIOKafkaAdminClient(**client_kwargs(own))
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, own.dead_letter_topic)]
            )
        finally:
            await admin.close()
        [resource] = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}

    assert asyncio.run(configs()).get("min.insync.replicas") == "1"
