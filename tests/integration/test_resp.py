"""`traitflow.resp.RespClient` against a real Redis: replies, errors, pipelining, scripts,
lost connections, the watchdog, SELECT and AUTH, and close."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis

from traitflow.config import Settings
from traitflow.resp import (
    Address,
    Arg,
    RespClient,
    RespConnectionError,
    RespError,
    RespTimeoutError,
    Script,
)
from traitflow.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def address(settings: Settings) -> Address:
    return Address.from_url(settings.redis_url)


@pytest.fixture
def other_db(address: Address) -> int:
    """A database other than the fixture URL's."""
    return 2 if address.db == 1 else 1


@pytest.fixture
def prefix(redis_client: redis.Redis, address: Address, other_db: int) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (in both dbs)."""
    prefix = f"tfresp-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)
    with sync_client(address, other_db) as other:
        for key in other.scan_iter(match=f"{prefix}:*"):
            other.delete(key)


@pytest.fixture
async def client(address: Address) -> AsyncIterator[RespClient]:
    client = RespClient(address)
    try:
        yield client
    finally:
        await client.close()


def sync_client(address: Address, db: int) -> redis.Redis:
    """A redis-py client on `address`'s server, database `db`."""
    assert address.host is not None
    return redis.Redis(
        host=address.host,
        port=address.port,
        db=db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
    )


def writer_of(client: RespClient) -> asyncio.StreamWriter:
    writer = client._writer
    assert writer is not None, "the client is not connected"
    return writer


async def within(seconds: float, awaitable: Awaitable[Any]) -> tuple[Any, float]:
    """(the result, how long it took); fails the test rather than hang past `seconds`."""
    start = time.monotonic()
    result = await asyncio.wait_for(awaitable, seconds)
    return result, time.monotonic() - start


# -- replies ---------------------------------------------------------------------------


async def test_set_and_get_round_trip_bytes(client: RespClient, prefix: str) -> None:
    key = f"{prefix}:k"
    assert await client.call("SET", key, "välue") == b"OK"
    assert await client.call("GET", key) == "välue".encode()
    assert await client.call("SET", key, b"\x00\xff\r\n") == b"OK"
    assert await client.call("GET", key) == b"\x00\xff\r\n"


async def test_missing_key_is_none(client: RespClient, prefix: str) -> None:
    assert await client.call("GET", f"{prefix}:missing") is None


async def test_integer_reply(client: RespClient, prefix: str) -> None:
    key = f"{prefix}:n"
    assert await client.call("INCR", key) == 1
    assert await client.call("INCRBY", key, 41) == 42
    assert await client.call("EXISTS", key, f"{prefix}:missing") == 1


async def test_list_reply_with_a_missing_key(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    redis_client.set(f"{prefix}:a", "1")
    redis_client.set(f"{prefix}:c", "3")
    reply = await client.call("MGET", f"{prefix}:a", f"{prefix}:b", f"{prefix}:c")
    assert reply == [b"1", None, b"3"]


async def test_an_error_reply_raises_and_the_connection_stays_usable(
    client: RespClient, prefix: str
) -> None:
    key = f"{prefix}:s"
    await client.call("SET", key, "not a number")
    writer = writer_of(client)
    with pytest.raises(RespError, match="not an integer"):
        await client.call("INCR", key)
    with pytest.raises(RespError, match=r"(?i)unknown command"):
        await client.call("NOSUCHCOMMAND", key)
    assert await client.call("GET", key) == b"not a number"
    assert client._writer is writer  # same connection: an error reply is no lost connection


async def test_an_error_reply_carries_its_code(client: RespClient, prefix: str) -> None:
    """What the API counts a failure by (`api.errors`), as a real Redis words it."""
    key = f"{prefix}:list"
    await client.call("RPUSH", key, "x")
    with pytest.raises(RespError) as wrong_type:
        await client.call("GET", key)
    assert wrong_type.value.code == "WRONGTYPE"
    with pytest.raises(RespError) as unknown:
        await client.call("NOSUCHCOMMAND")
    assert unknown.value.code == "ERR"
    with pytest.raises(RespError) as no_script:
        await client.call("EVALSHA", "0" * 40, 0)
    assert no_script.value.code == "NOSCRIPT"
    failing = Script.of("return redis.call('GET', KEYS[1])")  # WRONGTYPE inside a script
    with pytest.raises(RespError) as in_script:
        await client.eval(failing, [key], [])
    assert in_script.value.code == "WRONGTYPE", str(in_script.value)


async def test_errors_among_concurrent_calls_go_to_their_callers(
    client: RespClient, prefix: str
) -> None:
    await client.call("SET", f"{prefix}:s", "text")
    results = await asyncio.gather(
        client.call("SET", f"{prefix}:a", "1"),
        client.call("INCR", f"{prefix}:s"),
        client.call("GET", f"{prefix}:a"),
        return_exceptions=True,
    )
    assert results[0] == b"OK"
    assert isinstance(results[1], RespError)
    assert results[2] == b"1"


# -- concurrency and pipelining --------------------------------------------------------


async def test_concurrent_calls_each_get_their_own_reply(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    n = 200
    for i in range(n):
        redis_client.set(f"{prefix}:{i}", f"value-{i}")
    replies = await asyncio.gather(*(client.call("GET", f"{prefix}:{i}") for i in range(n)))
    assert replies == [f"value-{i}".encode() for i in range(n)]

    mixed = await asyncio.gather(
        *(
            client.call("INCRBY", f"{prefix}:n{i}", i)
            if i % 2
            else client.call("GET", f"{prefix}:{i}")
            for i in range(n)
        )
    )
    assert mixed == [i if i % 2 else f"value-{i}".encode() for i in range(n)]


async def test_calls_in_one_loop_turn_go_out_in_one_write(
    client: RespClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.call("PING")
    writer = writer_of(client)
    writes: list[bytes] = []
    original = writer.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        original(data)

    monkeypatch.setattr(writer, "write", counting)
    n = 50
    replies = await asyncio.gather(
        *(client.call("SET", f"{prefix}:{i}", f"v{i}") for i in range(n))
    )
    assert replies == [b"OK"] * n
    assert len(writes) == 1
    assert writes[0].count(b"SET") == n

    values = await asyncio.gather(*(client.call("GET", f"{prefix}:{i}") for i in range(n)))
    assert values == [f"v{i}".encode() for i in range(n)]
    assert len(writes) == 2

    # sequential calls: one write each
    assert await client.call("GET", f"{prefix}:0") == b"v0"
    assert await client.call("GET", f"{prefix}:1") == b"v1"
    assert len(writes) == 4


# -- scripts ---------------------------------------------------------------------------


def recording(client: RespClient, monkeypatch: pytest.MonkeyPatch) -> list[Arg]:
    """The command names `client` sends from now on."""
    sent: list[Arg] = []
    queue = client._queue

    def record(writer: asyncio.StreamWriter, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        sent.append(args[0])
        return queue(writer, args)

    monkeypatch.setattr(client, "_queue", record)
    return sent


async def test_eval_loads_the_script_when_redis_lacks_it(
    client: RespClient,
    prefix: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a script of this test's own, so Redis cannot have it yet
    script = Script.of(
        f"-- {prefix}\nredis.call('SET', KEYS[1], ARGV[1]) return {{ARGV[1], #KEYS}}"
    )
    key = f"{prefix}:k"
    sent = recording(client, monkeypatch)
    assert redis_client.script_exists(script.sha) == [False]

    assert await client.eval(script, [key], ["one"]) == [b"one", 1]
    assert sent == ["EVALSHA", "EVAL"]  # NOSCRIPT, then the source
    assert redis_client.script_exists(script.sha) == [True]
    assert redis_client.get(key) == b"one"

    sent.clear()
    assert await client.eval(script, [key], ["two"]) == [b"two", 1]
    assert sent == ["EVALSHA"]  # cached: the source is not sent again

    redis_client.script_flush()
    assert redis_client.script_exists(script.sha) == [False]
    sent.clear()
    assert await client.eval(script, [key], ["three"]) == [b"three", 1]
    assert sent == ["EVALSHA", "EVAL"]
    assert redis_client.script_exists(script.sha) == [True]
    assert redis_client.get(key) == b"three"

    sent.clear()
    assert await client.eval(script, [key], ["four"]) == [b"four", 1]
    assert sent == ["EVALSHA"]


async def test_a_script_error_is_raised_and_not_retried(
    client: RespClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"{prefix}:s"
    await client.call("SET", key, "text")
    script = Script.of("return redis.call('INCR', KEYS[1])")
    await client.call("SCRIPT", "LOAD", script.source)
    sent = recording(client, monkeypatch)
    with pytest.raises(RespError, match="not an integer"):
        await client.eval(script, [key], [])
    assert sent == ["EVALSHA"]
    assert await client.call("GET", key) == b"text"


async def test_eval_soon_goes_out_with_the_next_command_in_one_write(
    client: RespClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read route does: queue the rate-limit script, then await its read."""
    await client.call("SET", f"{prefix}:view", "the view")
    writer = writer_of(client)
    writes: list[bytes] = []
    original = writer.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        original(data)

    monkeypatch.setattr(writer, "write", counting)
    script = Script.of("return redis.call('INCR', KEYS[1])")
    await client.call("SCRIPT", "LOAD", script.source)
    writes.clear()
    charged = client.eval_soon(script, [f"{prefix}:n"], [])
    assert await client.call("GET", f"{prefix}:view") == b"the view"
    assert await charged == 1
    assert len(writes) == 1
    assert b"EVALSHA" in writes[0]
    assert b"GET" in writes[0]


async def test_eval_soon_loads_a_missing_script_and_raises_script_errors(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    await client.call("PING")  # connected: the no-task path
    script = Script.of(f"-- {prefix}\nreturn redis.call('INCR', KEYS[1])")
    assert redis_client.script_exists(script.sha) == [False]
    assert await client.eval_soon(script, [f"{prefix}:n"], []) == 1
    assert redis_client.script_exists(script.sha) == [True]
    assert await client.eval_soon(script, [f"{prefix}:n"], []) == 2

    await client.call("SET", f"{prefix}:text", "text")
    with pytest.raises(RespError, match="not an integer"):
        await client.eval_soon(script, [f"{prefix}:text"], [])


async def test_eval_soon_connects_when_not_connected(address: Address, prefix: str) -> None:
    fresh = RespClient(address)
    try:
        script = Script.of("return redis.call('INCR', KEYS[1])")
        assert await fresh.eval_soon(script, [f"{prefix}:n"], []) == 1
    finally:
        await fresh.close()


async def test_eval_soon_fails_with_its_connection(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    """A script queued behind a blocked command when the connection dies fails
    promptly, no hang."""
    own_id = await client.call("CLIENT", "ID")
    script = Script.of("return redis.call('INCR', KEYS[1])")
    await client.call("SCRIPT", "LOAD", script.source)
    blocked = asyncio.ensure_future(client.call("BLPOP", f"{prefix}:none", 5))
    await asyncio.sleep(0)  # the BLPOP is queued first: the script waits behind it
    charged = client.eval_soon(script, [f"{prefix}:n"], [])
    await asyncio.sleep(0.1)
    redis_client.client_kill_filter(_id=str(own_id))
    with pytest.raises(RespConnectionError):
        await asyncio.wait_for(charged, 2)
    with pytest.raises(RespConnectionError):
        await blocked


# -- lost connections ------------------------------------------------------------------


async def test_a_connection_killed_by_the_server_is_replaced(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    key = f"{prefix}:k"
    await client.call("SET", key, "kept")
    first_id = await client.call("CLIENT", "ID")
    assert isinstance(first_id, int)
    assert redis_client.client_kill_filter(_id=str(first_id)) == 1

    failures = 0
    for _ in range(2):
        try:
            value, _ = await within(5, client.call("GET", key))
        except RespConnectionError:
            failures += 1
            continue
        break
    else:
        pytest.fail("no command succeeded within two attempts after the connection was killed")
    assert value == b"kept"
    assert failures <= 1
    second_id = await client.call("CLIENT", "ID")
    assert isinstance(second_id, int)
    assert second_id != first_id
    assert await client.call("SET", key, "again") == b"OK"
    assert redis_client.get(key) == b"again"


async def test_a_pending_command_fails_when_its_connection_is_killed(
    client: RespClient, prefix: str, redis_client: redis.Redis
) -> None:
    client_id = await client.call("CLIENT", "ID")
    blocked = asyncio.create_task(client.call("BLPOP", f"{prefix}:missing", 5))

    def is_blocked() -> bool:
        return any(
            c["id"] == str(client_id) and c["cmd"] == "blpop" for c in redis_client.client_list()
        )

    deadline = time.monotonic() + 2
    while not is_blocked():
        assert time.monotonic() < deadline, "BLPOP never reached Redis"
        await asyncio.sleep(0.01)
    assert redis_client.client_kill_filter(_id=str(client_id)) == 1

    start = time.monotonic()
    with pytest.raises(RespConnectionError, match="lost"):
        await asyncio.wait_for(blocked, 2)
    assert time.monotonic() - start < 1  # failed at once: no wait for BLPOP's 5 s
    assert await client.call("ECHO", "back") == b"back"


async def test_bytes_that_are_not_resp_fail_the_pending_commands_at_once() -> None:
    """A server (or anything else on the port) that answers garbage: the connection is
    dropped and its commands fail as lost, without waiting for the watchdog."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(1024)  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(Address(host="127.0.0.1", port=port), timeout_s=5.0)
    try:
        start = time.monotonic()
        with pytest.raises(RespConnectionError, match="lost") as lost:
            await within(4, client.call("PING"))
        assert time.monotonic() - start < 1  # the watchdog would have taken 5 s or more
        assert not isinstance(lost.value, RespTimeoutError)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_cannot_connect(address: Address) -> None:
    client = RespClient(dataclasses.replace(address, host="127.0.0.1", port=free_port()))
    try:
        with pytest.raises(RespConnectionError, match="cannot connect"):
            await within(5, client.call("PING"))
    finally:
        await client.close()


async def test_the_watchdog_drops_a_connection_redis_stopped_answering(
    address: Address, prefix: str, redis_client: redis.Redis
) -> None:
    client = RespClient(address, timeout_s=0.5)
    try:
        key = f"{prefix}:k"
        assert await client.call("SET", key, "v") == b"OK"
        redis_client.client_pause(2000, all=True)
        try:
            start = time.monotonic()
            with pytest.raises(RespTimeoutError, match=r"did not answer within 0\.5 s"):
                await within(3, client.call("GET", key))
            took = time.monotonic() - start
            assert 0.5 <= took < 2.0
        finally:
            redis_client.client_unpause()
        value, _ = await within(3, client.call("GET", key))
        assert value == b"v"
    finally:
        await client.close()


async def test_a_slow_but_answered_command_is_not_dropped(address: Address, prefix: str) -> None:
    client = RespClient(address, timeout_s=1.0)
    try:
        # BLPOP waits 0.3 s in Redis, well within the timeout
        assert await client.call("BLPOP", f"{prefix}:missing", 0.3) is None
        assert await client.call("ECHO", "x") == b"x"
    finally:
        await client.close()


# -- SELECT and AUTH -------------------------------------------------------------------


async def test_a_url_with_another_db_selects_it(
    address: Address, other_db: int, prefix: str, redis_client: redis.Redis
) -> None:
    url = address_url(address, db=other_db)
    client = RespClient.from_url(url)
    assert client.address.db == other_db
    key = f"{prefix}:k"
    try:
        assert await client.call("SET", key, "elsewhere") == b"OK"
        assert await client.call("GET", key) == b"elsewhere"
    finally:
        await client.close()
    assert redis_client.get(key) is None
    with sync_client(address, other_db) as other:
        assert other.get(key) == b"elsewhere"


def address_url(address: Address, *, db: int, user: str | None = None, password: str = "") -> str:
    assert address.host is not None
    scheme = "rediss" if address.tls else "redis"
    credentials = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if user else ""
    if user is None and address.password is not None:
        credentials = (
            f"{quote(address.username or '', safe='')}:{quote(address.password, safe='')}@"
        )
    return f"{scheme}://{credentials}{address.host}:{address.port}/{db}"


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """(name, password) of a Redis ACL user of this test's own, with every permission."""
    name = f"tfresp-{uuid.uuid4().hex[:8]}"
    password = f"p@ss:{uuid.uuid4().hex[:8]}/%"
    redis_client.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        commands=["+@all"],
        keys=["~*"],
    )
    try:
        yield name, password
    finally:
        redis_client.acl_deluser(name)


async def test_auth_with_user_and_password(
    address: Address, acl_user: tuple[str, str], other_db: int, prefix: str
) -> None:
    name, password = acl_user
    client = RespClient.from_url(address_url(address, db=0, user=name, password=password))
    assert (client.address.username, client.address.password) == (name, password)
    try:
        assert await client.call("ACL", "WHOAMI") == name.encode()
    finally:
        await client.close()

    # AUTH and SELECT, both in the handshake
    client = RespClient.from_url(address_url(address, db=other_db, user=name, password=password))
    key = f"{prefix}:k"
    try:
        assert await client.call("SET", key, "authed") == b"OK"
        assert await client.call("ACL", "WHOAMI") == name.encode()
    finally:
        await client.close()
    with sync_client(address, other_db) as other:
        assert other.get(key) == b"authed"


def open_fds() -> int | None:
    """How many files this process has open (None where /proc does not say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except FileNotFoundError:
        return None


async def test_a_wrong_password_is_a_connection_error_naming_auth(
    address: Address, acl_user: tuple[str, str], redis_client: redis.Redis
) -> None:
    name, password = acl_user
    client = RespClient.from_url(address_url(address, db=0, user=name, password=password + "x"))
    redis_client.ping()  # its connection open before counting
    fds = open_fds()
    try:
        with pytest.raises(RespConnectionError, match="AUTH") as first:
            await within(5, client.call("PING"))
        assert "WRONGPASS" in str(first.value)
        assert client._writer is None
        # and again: every call tries the handshake anew
        with pytest.raises(RespConnectionError, match="AUTH") as second:
            await within(5, client.call("PING"))
        await asyncio.sleep(0.05)  # the refused connections' transports finish closing
        # refused connections are closed, not left to the garbage collector (the
        # exceptions, still referenced here, hold the handshake's frames)
        if fds is not None:
            assert open_fds() == fds
        assert first.value is not second.value
    finally:
        await client.close()


# -- close -----------------------------------------------------------------------------


async def test_close_is_idempotent_and_a_later_call_reconnects(
    address: Address, prefix: str
) -> None:
    client = RespClient(address)
    await client.close()  # never connected
    key = f"{prefix}:k"
    assert await client.call("SET", key, "v") == b"OK"
    first_id = await client.call("CLIENT", "ID")
    await client.close()
    await client.close()
    assert client._writer is None
    assert await client.call("GET", key) == b"v"
    assert await client.call("CLIENT", "ID") != first_id
    await client.close()


async def test_close_fails_a_pending_call(client: RespClient, prefix: str) -> None:
    await client.call("PING")
    blocked = asyncio.create_task(client.call("BLPOP", f"{prefix}:missing", 5))
    await asyncio.sleep(0.1)  # written, and waiting in Redis
    await within(2, client.close())
    with pytest.raises(RespConnectionError, match="closed"):
        await within(1, blocked)


async def test_a_call_made_while_close_is_in_progress_is_not_failed_by_it(
    client: RespClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() awaits the old connection's shutdown (TLS can take a while); a call made
    meanwhile reconnects, and close must leave that new connection's commands alone."""
    key = f"{prefix}:k"
    await client.call("SET", key, "v")
    old = writer_of(client)
    wait_closed = old.wait_closed

    async def slow_wait_closed() -> None:
        await asyncio.sleep(0.3)
        await wait_closed()

    monkeypatch.setattr(old, "wait_closed", slow_wait_closed)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    # on a new connection, pending in Redis (BLPOP waits 0.5 s) when close() finishes
    blocked = asyncio.create_task(client.call("BLPOP", f"{prefix}:missing", 0.5))
    await within(2, closing)
    result, _ = await within(2, blocked)
    assert result is None  # BLPOP's own timeout, not "client closed"
    # replies still go to their own callers
    assert await client.call("GET", key) == b"v"
