"""A secured Redis, with real processes: TLS (a CA of the test's, a server certificate,
a client certificate Redis requires), an ACL user that may touch only traitflow's key
prefix, and what a worker, the API and the CLI say when the credentials or the TLS
settings are wrong (a message naming the setting, exit 1, no traceback).

The worker and the API are real `traitflow` processes given the settings through their
environment (`Settings.child_env`), as an operator gives them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from api.keys import RedisKeyStore, new_key
from tests.integration.conftest import Publisher, wait_until
from tests.integration.workers import ROOT, alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import resp_client, sync_client
from traitflow.resp import RespConnectionError
from traitflow.services import Daemon, free_port, port_open
from traitflow.topics import ensure_topics

PASSWORD = "tls-test-password"
#: what traitflow needs of an ACL user (README, "Secured Redis"): every command but the
#: dangerous ones, and INFO (the start checks read the eviction policy and persistence)
ACL_COMMANDS = ["+@all", "-@dangerous", "+info"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    other_ca: Path  # a CA that signed nothing Redis presents


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _authority(directory: Path, name: str) -> Path:
    _openssl(
        directory,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2"),
        *("-subj", f"/CN={name}"),
    )
    return directory / f"{name}.crt"


def _issue(directory: Path, name: str, extensions: str) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        directory,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
    )
    _openssl(
        directory,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext"),
    )
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = _authority(directory, "ca")
    server = _issue(directory, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _issue(directory, "client", "extendedKeyUsage=clientAuth")
    return Certificates(ca, server, client, _authority(directory, "other-ca"))


@pytest.fixture(scope="module")
def tls_redis(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A redis-server on a TLS port only, requiring a client certificate and a password;
    yields its port."""
    directory = tmp_path_factory.mktemp("tls-redis")
    port = free_port()
    daemon = Daemon("redis", directory)
    (cert, key), ca = certificates.server, certificates.ca
    process = daemon.spawn(
        [
            "redis-server",
            *("--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes"),
            *("--requirepass", PASSWORD, "--dir", str(directory), "--save", ""),
            *("--appendonly", "yes", "--maxmemory-policy", "noeviction"),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TLS redis-server did not start: {daemon.log_file.read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        daemon.stop()


def _tls_settings(
    settings: Settings, port: int, certificates: Certificates, tmp_path: Path, **changes: Any
) -> Settings:
    return tls_settings(settings, f"rediss://127.0.0.1:{port}/0", certificates, tmp_path, **changes)


def tls_settings(
    settings: Settings, url: str, certificates: Certificates, tmp_path: Path, **changes: Any
) -> Settings:
    """`settings`, isolated in `tmp_path`, reaching the Redis at `url` over TLS with the
    test's client certificate and password (`changes` last)."""
    cert, key = certificates.client
    values: dict[str, Any] = {
        "redis_url": url,
        "redis_password": PASSWORD,
        "redis_ssl_ca_file": certificates.ca,
        "redis_ssl_cert_file": cert,
        "redis_ssl_key_file": key,
        "home": tmp_path,
    }
    return settings.isolated(f"tls-{uuid.uuid4().hex[:8]}", **(values | changes))


def _create_key(settings: Settings) -> str:
    record, token = new_key("security-test", admin=True)

    async def store() -> None:
        keys = RedisKeyStore.from_url(settings, settings.key_prefix)
        try:
            await keys.create(record)
        finally:
            await keys.close()

    asyncio.run(store())
    return token


@contextlib.contextmanager
def _pipeline(settings: Settings) -> Iterator[tuple[str, str]]:
    """A real worker and API over `settings`; yields (API base URL, an admin key) once
    the worker has written a profile."""
    asyncio.run(ensure_topics(settings))
    worker = start_worker(settings, "worker")
    try:
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        Publisher(settings, next(iter(settings.sources)))(
            [{"type": "identify", "userId": probe, "traits": {"probe": True}}]
        )
        client = sync_client(settings)
        try:
            view = KeyLayout(settings.key_prefix).view("user", probe)
            wait_until(lambda: alive(worker) and client.exists(view), timeout=90, what="the worker")
        finally:
            client.close()
        key = _create_key(settings)
        with running_api(settings, "api") as url:
            yield url, key
    finally:
        worker.stop()


def _served_profile(settings: Settings, url: str, key: str) -> dict[str, Any]:
    """Publish an identify and read its profile back through the API."""
    user = f"u-{uuid.uuid4().hex[:10]}"
    Publisher(settings, next(iter(settings.sources)))(
        [{"type": "identify", "userId": user, "traits": {"plan": "pro"}}]
    )
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=5.0) as http:

        def served() -> dict[str, Any] | None:
            answer = http.get(f"/v1/collections/users/records/user_id/{user}")
            assert answer.status_code in (200, 404), answer.text
            return answer.json() if answer.status_code == 200 else None

        found: dict[str, Any] = wait_until(served, timeout=30, what="the profile")
    return found


def _traitflow(
    settings: Settings, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traitflow", *args],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], setting: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert setting in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout


def test_a_worker_and_the_api_serve_a_profile_over_tls_with_a_client_certificate(
    settings: Settings, tls_redis: int, certificates: Certificates, tmp_path: Path
) -> None:
    own = _tls_settings(settings, tls_redis, certificates, tmp_path)
    with _pipeline(own) as (url, key):
        profile = _served_profile(own, url, key)
    assert profile["traits"]["plan"] == "pro"


def test_a_wrong_ca_is_a_clear_refusal_at_start(
    settings: Settings, tls_redis: int, certificates: Certificates, tmp_path: Path
) -> None:
    wrong = _tls_settings(
        settings, tls_redis, certificates, tmp_path, redis_ssl_ca_file=certificates.other_ca
    )
    for command in (["worker", "--processes", "1"], ["api", "--port", str(free_port())]):
        _assert_refused(_traitflow(wrong, *command), "TRAITFLOW_REDIS_SSL_CA_FILE")
    _assert_refused(_traitflow(wrong, "keys", "list"), "TRAITFLOW_REDIS_SSL_CA_FILE")
    # the API's own client verifies the certificate as redis-py does
    with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(resp_client(wrong).call("PING"))


def test_without_the_client_certificate_redis_refuses_the_handshake(
    settings: Settings, tls_redis: int, certificates: Certificates, tmp_path: Path
) -> None:
    own = _tls_settings(
        settings,
        tls_redis,
        certificates,
        tmp_path,
        redis_ssl_cert_file=None,
        redis_ssl_key_file=None,
    )

    async def ping() -> Any:
        client = resp_client(own, timeout_s=3.0)
        try:
            return await client.call("PING")
        finally:
            await client.close()

    with pytest.raises(RespConnectionError):
        asyncio.run(ping())


def test_a_wrong_password_is_a_clear_refusal_at_start(settings: Settings, tmp_path: Path) -> None:
    wrong = settings.isolated(
        f"pw-{uuid.uuid4().hex[:8]}", redis_password="not-the-password", home=tmp_path
    )
    for command in (["worker", "--processes", "1"], ["api", "--port", str(free_port())]):
        result = _traitflow(wrong, *command)
        _assert_refused(result, "TRAITFLOW_REDIS_PASSWORD")
        assert "not-the-password" not in result.stderr
    _assert_refused(_traitflow(wrong, "keys", "list"), "TRAITFLOW_REDIS_PASSWORD")


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str, str]]:
    """An ACL user that may touch only keys under a prefix of its own: (name, password,
    prefix)."""
    name, password = f"tf-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    prefix = f"acl-{uuid.uuid4().hex[:8]}"
    rules = ["on", f">{password}", "resetkeys", f"~{prefix}:*", "resetchannels", *ACL_COMMANDS]
    redis_client.execute_command("ACL", "SETUSER", name, *rules)  # type: ignore[no-untyped-call]
    try:
        yield name, password, prefix
    finally:
        redis_client.execute_command("ACL", "DELUSER", name)  # type: ignore[no-untyped-call]


def test_an_acl_user_limited_to_the_prefix_runs_the_worker_and_the_api(
    settings: Settings,
    redis_client: redis.Redis,
    acl_user: tuple[str, str, str],
    tmp_path: Path,
) -> None:
    name, password, prefix = acl_user
    parts = urlsplit(settings.redis_url)  # the session's Redis, without its password
    url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    own = settings.isolated(
        prefix,
        redis_url=url,
        redis_username=name,
        redis_password=password,
        home=tmp_path,
    )
    assert own.redis_url.startswith("redis://127.0.0.1:")  # no password of the default user
    redis_client.acl_log_reset()
    with _pipeline(own) as (api, key):
        profile = _served_profile(own, api, key)
    assert profile["traits"]["plan"] == "pro"
    # nothing was refused but the start check's CONFIG GET, which it does without
    # (needed only for TRAITFLOW_REDIS_SYNC=disk on a Redis without WAITAOF)
    denied = cast("list[dict[str, Any]]", redis_client.acl_log())
    assert {entry["object"] for entry in denied if entry["username"] == name} <= {"config|get"}
    # the user may not touch a key outside the prefix
    client = sync_client(own)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("outside-the-prefix", b"x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get(f"{settings.key_prefix}:s:user:anyone")
    finally:
        client.close()
