"""Every Kafka client traitflow makes connects as the settings say: TLS and SASL.

Why one place: the worker (Faust: its consumer, its producer, which also sends the
dead letters and the announcements), the CLI (producers, admin calls, readers), the
API's ingest publisher, source and erasure jobs, exports to a topic and backfill
readers must all reach a secured cluster the same way. A client built from
`settings.kafka_bootstrap` alone would connect in plain text and fail against a
secured broker only where it was forgotten.

- `client_kwargs(settings)`: the keyword arguments of `AIOKafkaProducer`,
  `AIOKafkaConsumer` and `AIOKafkaAdminClient` (bootstrap servers, security protocol,
  SSL context, SASL mechanism and credentials);
- `faust_options(settings)`: the same for the Faust app (`broker_credentials`);
- `security_problem(settings)`: why the settings cannot work (checked when they load);
- `connection_problem(settings)`: what the broker said when a connection as configured
  fails (refused credentials, an untrusted certificate), for a message an operator can
  act on; the worker checks it before it starts (`traitflow worker`);
- `failure_message(settings, exc)`: the same, for a command whose Kafka operation
  failed (`traitflow produce`, `traitflow dead-letters`).

The SASL password is a `SecretStr` in the settings and is given only to the client:
no message here names it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr


class Settings(Protocol):
    """What is read here of `traitflow.config.Settings` (which validates itself with
    `security_problem`, so this module cannot import it)."""

    @property
    def kafka_bootstrap(self) -> str: ...
    @property
    def kafka_security_protocol(self) -> str: ...
    @property
    def kafka_sasl_mechanism(self) -> str | None: ...
    @property
    def kafka_sasl_username(self) -> str | None: ...
    @property
    def kafka_sasl_password(self) -> SecretStr | None: ...
    @property
    def kafka_ssl_ca_file(self) -> Path | None: ...
    @property
    def kafka_ssl_cert_file(self) -> Path | None: ...
    @property
    def kafka_ssl_key_file(self) -> Path | None: ...
    @property
    def kafka_ssl_check_hostname(self) -> bool: ...
    @property
    def topic_replication_factor(self) -> int | None: ...
    @property
    def topic_min_insync_replicas(self) -> int | None: ...


SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})

#: what a connection check may take per bootstrap server
CHECK_TIMEOUT_S = 10.0


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in SASL_PROTOCOLS


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in TLS_PROTOCOLS


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every connection (None without TLS): the broker's
    certificate checked against `kafka_ssl_ca_file` (unset: the system's CAs), and its
    name against the bootstrap host unless `kafka_ssl_check_hostname` is false (the
    chain is checked either way); the client certificate and key when set. Built anew
    per client, so a renewed file is read by the next client."""
    if not uses_tls(settings):
        return None
    cafile = settings.kafka_ssl_ca_file
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile is not None else None
    )
    if settings.kafka_ssl_cert_file is not None:
        keyfile = settings.kafka_ssl_key_file
        context.load_cert_chain(
            str(settings.kafka_ssl_cert_file), str(keyfile) if keyfile is not None else None
        )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka's security arguments for `settings` (no bootstrap servers)."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if uses_sasl(settings):
        password = settings.kafka_sasl_password
        kwargs |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password is not None else None,
        }
    return kwargs


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """What every aiokafka producer, consumer and admin client traitflow makes is given:
    `AIOKafkaProducer(**client_kwargs(settings), acks="all")`."""
    return {"bootstrap_servers": settings.kafka_bootstrap, **security_kwargs(settings)}


def faust_options(settings: Settings) -> dict[str, Any]:
    """The Faust app's options for `settings`: `broker_credentials` (TLS, SASL or both),
    which Faust hands to its consumer, its producer and its topic creation. Plain text:
    none."""
    import faust

    context = ssl_context(settings)
    if uses_sasl(settings):
        password = settings.kafka_sasl_password
        return {
            "broker_credentials": faust.SASLCredentials(
                username=settings.kafka_sasl_username,
                password=password.get_secret_value() if password is not None else None,
                mechanism=settings.kafka_sasl_mechanism,
                ssl_context=context,
            )
        }
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def security_problem(settings: Settings) -> str | None:
    """Why these Kafka security settings cannot work, naming the variables; None when
    they can. Checked when settings load (`Settings`), so a worker or command with a
    mistake in them stops at once rather than at its first connection."""
    protocol = settings.kafka_security_protocol
    password = settings.kafka_sasl_password
    sasl = {
        "TRAITFLOW_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "TRAITFLOW_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "TRAITFLOW_KAFKA_SASL_PASSWORD": password.get_secret_value() if password else None,
    }
    if protocol in SASL_PROTOCOLS:
        missing = [name for name, value in sasl.items() if not value]
        if missing:
            return (
                f"TRAITFLOW_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)} "
                "(SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, a user and its password)"
            )
    elif named := [name for name, value in sasl.items() if value is not None]:
        return (
            f"{', '.join(named)} set, but TRAITFLOW_KAFKA_SECURITY_PROTOCOL is {protocol}: "
            "SASL is used with SASL_PLAINTEXT or SASL_SSL only"
        )
    files = {
        "TRAITFLOW_KAFKA_SSL_CA_FILE": settings.kafka_ssl_ca_file,
        "TRAITFLOW_KAFKA_SSL_CERT_FILE": settings.kafka_ssl_cert_file,
        "TRAITFLOW_KAFKA_SSL_KEY_FILE": settings.kafka_ssl_key_file,
    }
    named = [name for name, path in files.items() if path is not None]
    if named and protocol not in TLS_PROTOCOLS:
        return (
            f"{', '.join(named)} set, but TRAITFLOW_KAFKA_SECURITY_PROTOCOL is {protocol}: "
            "TLS is used with SSL or SASL_SSL only"
        )
    if settings.kafka_ssl_key_file is not None and settings.kafka_ssl_cert_file is None:
        return (
            "TRAITFLOW_KAFKA_SSL_KEY_FILE set without TRAITFLOW_KAFKA_SSL_CERT_FILE "
            "(the client certificate the key belongs to)"
        )
    for name, path in files.items():
        if path is not None and not path.is_file():
            return f"{name}: no such file: {path}"
    try:
        ssl_context(settings)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return (
            f"the Kafka TLS files do not load ({', '.join(named) or 'the system CAs'}): "
            f"{exc} (a CA file must hold PEM certificates; the certificate file a PEM "
            "certificate, and the key file its unencrypted PEM key)"
        )
    factor, insync = settings.topic_replication_factor, settings.topic_min_insync_replicas
    if factor is not None and insync is not None and insync > factor:
        return (
            f"TRAITFLOW_TOPIC_MIN_INSYNC_REPLICAS={insync} is above "
            f"TRAITFLOW_TOPIC_REPLICATION_FACTOR={factor}: no write could be acknowledged"
        )
    return None


def describe(settings: Settings) -> str:
    """How the clients connect, for messages: never the password."""
    how: str = settings.kafka_security_protocol
    if uses_sasl(settings):
        how += f", {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r}"
    return f"Kafka at {settings.kafka_bootstrap} ({how})"


@dataclass(frozen=True)
class ConnectionProblem:
    """Why a connection as configured failed. `fatal`: the broker refused what the
    settings say (credentials, mechanism, certificates): trying again cannot help.
    Otherwise the broker may just be away (not reachable, closed the connection)."""

    message: str
    fatal: bool


async def connection_problem(
    settings: Settings, timeout_s: float = CHECK_TIMEOUT_S
) -> ConnectionProblem | None:
    """Connect to the bootstrap servers one after the other, as every client does (TLS
    handshake, SASL authentication); None as soon as one accepts, else why the last
    one did not."""
    from aiokafka.conn import create_conn

    problem: ConnectionProblem | None = None
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().removeprefix("kafka://").rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                connection = await create_conn(
                    host or "127.0.0.1",
                    int(port or 9092),
                    request_timeout_ms=int(timeout_s * 1000),
                    **security_kwargs(settings),
                )
        except Exception as exc:  # what was refused decides the message
            problem = explain(settings, exc)
            if problem.fatal:
                return problem
            continue
        connection.close()
        return None
    return problem


async def failure_message(
    settings: Settings, exc: BaseException, timeout_s: float = CHECK_TIMEOUT_S
) -> str:
    """What a failed Kafka operation (`exc`) tells an operator. A client that cannot
    connect says only that it could not bootstrap; a connection made again as
    configured says what the broker refused (`connection_problem`), naming the
    settings to check. If that connection succeeds, the broker was not the problem:
    the operation's own error."""
    problem = await connection_problem(settings, timeout_s)
    return problem.message if problem is not None else f"{describe(settings)}: {exc!r}"


def explain(settings: Settings, exc: BaseException) -> ConnectionProblem:
    """What a failed connection's error means for an operator, naming the settings to
    check."""
    from aiokafka import errors

    where = describe(settings)
    if isinstance(
        exc,
        errors.SaslAuthenticationFailed
        | errors.AuthenticationFailedError
        | errors.IllegalSaslStateError,
    ):
        return ConnectionProblem(
            f"{where}: the broker refused the SASL credentials ({exc}). Check "
            "TRAITFLOW_KAFKA_SASL_USERNAME, TRAITFLOW_KAFKA_SASL_PASSWORD and "
            "TRAITFLOW_KAFKA_SASL_MECHANISM (a SCRAM user exists per mechanism)",
            fatal=True,
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        return ConnectionProblem(
            f"{where}: the broker does not offer this SASL mechanism ({exc}). Set "
            "TRAITFLOW_KAFKA_SASL_MECHANISM to one it offers",
            fatal=True,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionProblem(
            f"{where}: the broker's TLS certificate was not accepted "
            f"({exc.verify_message or exc}). Check TRAITFLOW_KAFKA_SSL_CA_FILE (the CA "
            "that signed the broker's certificate; unset: the system's CAs) and, if the "
            "certificate does not name the bootstrap host, TRAITFLOW_KAFKA_SSL_CHECK_HOSTNAME",
            fatal=True,
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionProblem(
            f"{where}: the TLS handshake failed ({exc}). Check that the listener speaks "
            "TLS (TRAITFLOW_KAFKA_SECURITY_PROTOCOL) and, if it asks for a client "
            "certificate, TRAITFLOW_KAFKA_SSL_CERT_FILE and TRAITFLOW_KAFKA_SSL_KEY_FILE",
            fatal=True,
        )
    if isinstance(exc, errors.KafkaConnectionError | errors.CorrelationIdError | EOFError):
        hint = "check TRAITFLOW_KAFKA_SECURITY_PROTOCOL"
        if uses_tls(settings) and settings.kafka_ssl_cert_file is None:
            hint += (
                ", and whether the broker requires a client certificate "
                "(TRAITFLOW_KAFKA_SSL_CERT_FILE, TRAITFLOW_KAFKA_SSL_KEY_FILE)"
            )
        return ConnectionProblem(
            f"{where}: the broker closed the connection ({exc}). A listener that expects "
            f"TLS or SASL closes other connections: {hint}",
            fatal=False,
        )
    return ConnectionProblem(f"{where}: not reachable ({exc!r})", fatal=False)
