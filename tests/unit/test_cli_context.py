"""What every command says when it fails (`fail`, `redis_failure`) and how it runs its
work against a store (`run_closing`): traitflow/cli_context.py. The commands' own
messages are their tests' (test_cli_*.py); an unreachable Redis through a real command:
tests/integration/test_api_keys.py, refused credentials and TLS:
tests/integration/test_redis_security.py."""

from __future__ import annotations

import pytest
import redis

from traitflow.cli_context import fail, redis_failure, run_closing
from traitflow.config import Settings
from traitflow.redis_client import access_problem

#: a Redis whose URL holds a password, which no message may show
SETTINGS = Settings(redis_url="redis://:secret@127.0.0.1:1/0")


def test_fail_prints_the_message_on_stderr_and_returns_the_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert fail("no such thing").exit_code == 2
    assert fail("it failed", 1).exit_code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "error: no such thing\nerror: it failed\n")


@pytest.mark.parametrize(
    ("exc", "setting"),
    [
        (redis.AuthenticationError("WRONGPASS invalid username-password pair"), "PASSWORD"),
        (redis.ConnectionError("Error 1 connecting: [SSL] record layer failure"), "SSL_CA_FILE"),
        (redis.exceptions.NoPermissionError("NOPERM no permissions to run 'eval'"), "USERNAME"),
    ],
)
def test_an_access_problem_says_what_to_set(
    exc: redis.RedisError, setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = access_problem(exc, SETTINGS)
    assert problem is not None
    exit_ = redis_failure(SETTINGS, exc, "\nthe hint is for a Redis that did not answer")
    assert exit_.exit_code == 1
    err = capsys.readouterr().err
    assert err == f"error: {problem}\n"
    assert f"TRAITFLOW_REDIS_{setting}" in err
    assert "secret" not in err


def test_another_failure_names_host_port_and_type_never_the_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exc = redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert redis_failure(SETTINGS, exc).exit_code == 1
    assert redis_failure(SETTINGS, TimeoutError("timed out"), "\nrun it again").exit_code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: Redis at 127.0.0.1:1: ConnectionError: Error 111 connecting to "
        "127.0.0.1:1. Connection refused.\n"
        "error: Redis at 127.0.0.1:1: TimeoutError: timed out\nrun it again\n"
    )
    assert "secret" not in err
    assert "redis://" not in err


class Resource:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def test_run_closing_closes_what_it_opened_whatever_the_action_did() -> None:
    opened: list[Resource] = []

    def open_one() -> Resource:
        opened.append(Resource())
        return opened[-1]

    async def answer(resource: Resource) -> str:
        return "answer" if not resource.closed else "closed too early"

    async def refuse(resource: Resource) -> str:
        raise redis.ConnectionError("refused")

    assert run_closing(open_one, answer) == "answer"
    with pytest.raises(redis.ConnectionError, match="refused"):
        run_closing(open_one, refuse)
    assert [resource.closed for resource in opened] == [True, True]
