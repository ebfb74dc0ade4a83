"""Redis security settings: what every client is given (redis-py's kwargs, the API's
own client's address and TLS context), their validation, the embedded Redis's
generated password, and that no password reaches a repr or a message."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr, ValidationError

from traitflow.config import Settings
from traitflow.redis_client import RedisTarget, access_problem, async_client, resp_client
from traitflow.redis_password import embedded_password, password_file, url_with_password
from traitflow.resp import Address, RespClient, RespConnectionError, RespError
from traitflow.services import embedded_services


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """Files that exist (their content is not read by the settings)."""
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    return files


def test_a_plain_url_is_given_no_more_than_it_says() -> None:
    target = RedisTarget.of(Settings(redis_url="redis://cache:6380/2"))
    assert target.redis_py_kwargs() == {}
    assert target.bare_url == "redis://cache:6380/2"
    address = target.address()
    assert (address.host, address.port, address.db, address.tls) == ("cache", 6380, 2, False)
    assert address.password is None
    assert address.tls_context() is None


def test_a_password_in_the_url_keeps_working() -> None:
    target = RedisTarget.of(Settings(redis_url="redis://:s%40cret@cache:6379/0"))
    assert target.redis_py_kwargs() == {"password": "s@cret"}
    assert target.bare_url == "redis://cache:6379/0"
    assert target.address().password == "s@cret"


def test_the_username_and_password_settings_override_the_urls() -> None:
    settings = Settings(
        redis_url="redis://old:stale@cache:6379/0",
        redis_username="tf",
        redis_password=SecretStr("new"),
    )
    target = RedisTarget.of(settings)
    # the URL's credentials are dropped: redis-py would let them win over its kwargs
    assert target.bare_url == "redis://cache:6379/0"
    assert target.redis_py_kwargs() == {"username": "tf", "password": "new"}
    address = target.address()
    assert (address.username, address.password) == ("tf", "new")
    client = async_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("tf", "new")


def test_tls_settings_reach_redis_py_and_the_apis_client(tls_files: dict[str, Path]) -> None:
    settings = Settings(
        redis_url="rediss://cache:6380/0",
        redis_ssl_ca_file=tls_files["ca"],
        redis_ssl_cert_file=tls_files["cert"],
        redis_ssl_key_file=tls_files["key"],
        redis_ssl_check_hostname=False,
    )
    target = RedisTarget.of(settings)
    assert target.redis_py_kwargs() == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(tls_files["ca"]),
        "ssl_certfile": str(tls_files["cert"]),
        "ssl_keyfile": str(tls_files["key"]),
        "ssl_check_hostname": False,
    }
    kwargs = async_client(settings).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(tls_files["ca"])
    assert kwargs["ssl_check_hostname"] is False
    address = resp_client(settings).address
    assert address.tls
    assert (address.ssl_ca_file, address.ssl_cert_file, address.ssl_key_file) == (
        str(tls_files["ca"]),
        str(tls_files["cert"]),
        str(tls_files["key"]),
    )
    assert address.ssl_check_hostname is False


def test_the_apis_tls_context_verifies_the_certificate_and_the_host_unless_told() -> None:
    context = Address.from_url("rediss://cache:6380/0").tls_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    loose = Address(host="cache", tls=True, ssl_check_hostname=False).tls_context()
    assert loose is not None
    assert loose.verify_mode == ssl.CERT_REQUIRED
    assert not loose.check_hostname


def test_a_ca_file_that_is_not_a_certificate_fails_the_connection_not_the_process(
    tls_files: dict[str, Path],
) -> None:
    address = Address(host="127.0.0.1", port=1, tls=True, ssl_ca_file=str(tls_files["ca"]))
    with pytest.raises(RespConnectionError):
        asyncio.run(RespClient(address, timeout_s=2.0).call("PING"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"redis_ssl_ca_file": "ca"}, "TRAITFLOW_REDIS_SSL_CA_FILE set, but TRAITFLOW_REDIS_URL"),
        (
            {"redis_url": "rediss://cache/0", "redis_ssl_key_file": "key"},
            "TRAITFLOW_REDIS_SSL_KEY_FILE set without TRAITFLOW_REDIS_SSL_CERT_FILE",
        ),
        (
            {"redis_url": "rediss://cache/0", "redis_ssl_ca_file": "missing.pem"},
            "TRAITFLOW_REDIS_SSL_CA_FILE: no such file",
        ),
        ({"redis_username": ""}, "redis_username"),
    ],
)
def test_tls_settings_that_would_be_ignored_or_are_missing_are_refused(
    changes: dict[str, str], message: str, tls_files: dict[str, Path]
) -> None:
    values = {k: tls_files.get(v, v) for k, v in changes.items()}  # "ca": an existing file
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate(values)


def test_no_password_in_a_repr_or_a_dump() -> None:
    settings = Settings(
        redis_url="redis://:in-the-url@cache:6379/0", redis_password=SecretStr("the-setting")
    )
    target = RedisTarget.of(settings)
    for text in (repr(settings), str(settings), repr(target), repr(target.address())):
        assert "the-setting" not in text
    assert "in-the-url" not in repr(target) + repr(target.address())
    assert "the-setting" not in settings.model_dump_json()


def test_child_processes_get_the_password_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(redis_username="tf", redis_password=SecretStr("s3cret"))
    env = settings.as_env()
    assert env["TRAITFLOW_REDIS_PASSWORD"] == "s3cret"  # not pydantic's mask
    assert env["TRAITFLOW_REDIS_USERNAME"] == "tf"
    assert env["TRAITFLOW_REDIS_SSL_CHECK_HOSTNAME"] == "true"
    child = Settings.from_environ(env)
    assert child.redis_password is not None
    assert child.redis_password.get_secret_value() == "s3cret"
    assert child.redis_url == settings.redis_url  # the child's is external: no injection


def test_the_embedded_redis_gets_a_password_generated_once(tmp_path: Path) -> None:
    first = Settings.from_environ({"TRAITFLOW_HOME": str(tmp_path)})
    path = password_file(tmp_path)
    password = path.read_text().strip()
    assert len(password) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.redis_url == f"redis://:{password}@127.0.0.1:16379/0"
    assert not first.redis_is_external
    again = Settings.from_environ({"TRAITFLOW_HOME": str(tmp_path)})
    assert again.redis_url == first.redis_url
    (redis_service,) = [s for s in embedded_services(again) if s.name == "redis"]
    assert redis_service.password == password
    assert password not in repr(redis_service)
    command = redis_service.command()
    assert password not in " ".join(command)  # the command line is readable by anyone
    config = Path(command[1])
    assert config.read_text() == f'requirepass "{password}"\n'
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_an_own_redis_or_password_generates_none(tmp_path: Path) -> None:
    own = Settings.from_environ(
        {"TRAITFLOW_HOME": str(tmp_path), "TRAITFLOW_REDIS_URL": "redis://cache:6379/0"}
    )
    assert own.redis_url == "redis://cache:6379/0"
    chosen = Settings.from_environ(
        {"TRAITFLOW_HOME": str(tmp_path), "TRAITFLOW_REDIS_PASSWORD": "mine"}
    )
    assert chosen.redis_url == "redis://127.0.0.1:16379/0"
    assert not password_file(tmp_path).exists()
    (redis_service,) = [s for s in embedded_services(chosen) if s.name == "redis"]
    assert redis_service.password == "mine"


def test_a_password_file_is_read_not_rewritten(tmp_path: Path) -> None:
    password_file(tmp_path).write_text("chosen-by-the-operator\n")
    assert embedded_password(tmp_path) == "chosen-by-the-operator"
    assert os.listdir(tmp_path) == ["redis.password"]  # no temporary file left


def test_url_with_password_keeps_the_rest() -> None:
    assert (
        url_with_password("redis://127.0.0.1:16379/0", "a/b") == "redis://:a%2Fb@127.0.0.1:16379/0"
    )
    assert url_with_password("rediss://tf@cache:1/2?x=1", "p") == "rediss://tf:p@cache:1/2?x=1"


@pytest.mark.parametrize(
    ("error", "setting"),
    [
        (
            redis.exceptions.AuthenticationError("invalid username-password pair"),
            "TRAITFLOW_REDIS_PASSWORD",
        ),
        (
            redis.exceptions.AuthenticationError("Authentication required."),
            "TRAITFLOW_REDIS_PASSWORD",
        ),
        (
            RespConnectionError("Redis refused 'AUTH': WRONGPASS invalid"),
            "TRAITFLOW_REDIS_PASSWORD",
        ),
        (RespError("NOPERM User tf has no permissions to run the 'get' command"), "Secured Redis"),
        (
            redis.exceptions.ConnectionError(
                "Error 1 connecting to cache:6380. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                "verify failed"
            ),
            "TRAITFLOW_REDIS_SSL_CA_FILE",
        ),
        (
            redis.exceptions.NoPermissionError(
                "User tf has no permissions to run the 'info' command"
            ),
            "Secured Redis",
        ),
    ],
)
def test_a_refusal_names_what_to_set_and_never_the_password(error: Exception, setting: str) -> None:
    settings = Settings(redis_url="redis://:hunter2@cache:6380/0")
    problem = access_problem(error, settings)
    assert problem is not None
    assert setting in problem
    assert "cache:6380" in problem
    assert "hunter2" not in problem


def test_a_redis_that_is_down_is_not_a_refusal() -> None:
    down = redis.exceptions.ConnectionError(
        "Error 111 connecting to cache:6380. Connection refused."
    )
    assert access_problem(down, "redis://cache:6380/0") is None
    assert access_problem(TimeoutError(), "redis://cache:6380/0") is None
