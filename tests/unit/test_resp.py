"""`traitflow.resp` without a server: Redis URLs, script hashes, its errors."""

from __future__ import annotations

import hashlib

import pytest

from traitflow.resp import Address, RespConnectionError, RespError, RespTimeoutError, Script


def test_host_port_and_db() -> None:
    assert Address.from_url("redis://host:1234/2") == Address(host="host", port=1234, db=2)


def test_defaults() -> None:
    address = Address.from_url("redis://localhost")
    assert (address.host, address.port, address.db) == ("localhost", 6379, 0)
    assert (address.path, address.tls, address.username, address.password) == (
        None,
        False,
        None,
        None,
    )


def test_db_from_the_query_when_the_path_has_none() -> None:
    assert Address.from_url("redis://h:7000?db=5") == Address(host="h", port=7000, db=5)


def test_password_only() -> None:
    address = Address.from_url("redis://:secret@h/0")
    assert address == Address(host="h", password="secret", db=0)
    assert address.username is None


def test_user_and_password_are_percent_decoded() -> None:
    address = Address.from_url("redis://us%40er:p%3Ass%2Fw%40rd%25@h:6380/4")
    assert address == Address(host="h", port=6380, username="us@er", password="p:ss/w@rd%", db=4)


def test_rediss_means_tls() -> None:
    address = Address.from_url("rediss://h:6390/1")
    assert address == Address(host="h", port=6390, tls=True, db=1)
    assert not Address.from_url("redis://h").tls


def test_unix_socket_with_db() -> None:
    address = Address.from_url("unix:///tmp/r.sock?db=3")
    assert address == Address(path="/tmp/r.sock", db=3)
    assert address.host is None


def test_unix_socket_with_password() -> None:
    address = Address.from_url("unix://:pw@/tmp/r.sock")
    assert (address.path, address.password, address.db) == ("/tmp/r.sock", "pw", 0)


@pytest.mark.parametrize("url", ["http://x", "x:6379", "redis+sentinel://h/0"])
def test_not_a_redis_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as caught:
        Address.from_url(url)
    assert repr(url) in str(caught.value)


@pytest.mark.parametrize(
    "source", ["return 1", "return redis.call('GET', KEYS[1])", "return 'é ☃'"]
)
def test_script_sha_is_the_sha1_of_its_source(source: str) -> None:
    script = Script.of(source)
    assert script.source == source
    assert script.sha == hashlib.sha1(source.encode()).hexdigest()
    assert len(script.sha) == 40


def test_scripts_differ_by_source() -> None:
    assert Script.of("return 1").sha != Script.of("return 2").sha


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "OOM"),
        ("MOVED 3999 10.0.0.5:6379", "MOVED"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", "WRONGTYPE"),
        ("ERR unknown command 'NOPE'", "ERR"),
        ("NOSCRIPT No matching script. Please use EVAL.", "NOSCRIPT"),
        # not a code: a script's own error text, lower case, digits, nothing at all
        ("user script failed", "ERR"),
        ("E2BIG too big", "ERR"),
        ("", "ERR"),
    ],
)
def test_an_error_reply_is_typed_by_its_first_word(reply: str, code: str) -> None:
    error = RespError(reply)
    assert error.code == code
    assert str(error) == reply  # the whole reply stays, for the log


def test_a_timeout_is_a_lost_connection_and_a_timeout() -> None:
    """The watchdog drops the connection of a command Redis did not answer: callers that
    handle a lost connection handle it, and those that tell timeouts apart can."""
    error = RespTimeoutError("Redis did not answer within 5 s")
    assert isinstance(error, RespConnectionError)
    assert isinstance(error, TimeoutError)
    assert not issubclass(RespConnectionError, TimeoutError)
