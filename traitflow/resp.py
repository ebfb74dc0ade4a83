"""A minimal asyncio Redis client for the API's read path: one multiplexed connection.

Why not redis-py here: a redis-py asyncio GET costs the calling process several times
the CPU of one here (`bench.redis_clients`; figures in bench/README.md). A profile
read is one round trip and little else, so
redis-py's per-command machinery (connection-pool checkout, retry and timeout
wrappers, response callbacks) was most of the API's cost. The worker keeps
redis-py: it makes two round trips per batch of thousands of events.

How: commands are written to one connection as they come, and a reader task matches
replies to callers in order (Redis answers a connection's commands in order), so
concurrent requests share the connection, and the commands issued in one turn of the
event loop go out in one write (automatic pipelining: under load, one send syscall
carries many requests' commands, and one read brings many replies). A lost connection fails the
commands waiting on it with `RespConnectionError`; the next command reconnects.
Replies are hiredis's: bytes, int, None, lists; an error reply raises `RespError`, whose
`code` is the reply's first word (`LOADING`, `READONLY`, `OOM`, `MOVED`, `ERR`, ...).

Timeout: a command unanswered for `timeout_s` (`TIMEOUT_S`, 5 s, unless given) fails
with `RespTimeoutError` (a `RespConnectionError`), and so does every command waiting
behind it on the connection, which is dropped: a watchdog checks every `timeout_s / 2`, so a command
fails between `timeout_s` and 1.5 times that after it was sent (7.5 s at most by
default), and a Redis that stopped answering (paused, overloaded, a network gone
silent) never holds a caller longer. Connecting, AUTH and SELECT share one such bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from attributes.errors import StoreError

Arg = str | bytes | int | float

#: hiredis's stubs type the argument as a 1-tuple; it takes any number of arguments
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


#: seconds a command may go unanswered before it fails (see the module's docstring)
TIMEOUT_S = 5.0


class RespError(StoreError):
    """Redis answered a command with an error reply.

    `code` is the reply's first word when it is one (Redis's error codes: `ERR`,
    `WRONGTYPE`, `LOADING`, `READONLY`, `OOM`, `MOVED`, `NOSCRIPT`, ...), else `ERR`:
    what kind of failure it is, to act on or to count, without the rest of the text,
    which may name a server (`MOVED 3999 10.0.0.5:6379`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        word = message.split(" ", 1)[0]
        self.code = word if word.isascii() and word.isalpha() and word.isupper() else "ERR"


class RespConnectionError(ConnectionError, StoreError):
    """The connection to Redis failed or was lost; the command may not have run. A
    `ConnectionError` (an OSError) first, as any lost connection: the worker retries it
    as transient, the API answers 503."""


class RespTimeoutError(RespConnectionError, TimeoutError):
    """Redis did not answer in time (`TIMEOUT_S`): connecting, or a command. The
    connection is dropped as if lost, so it is a `RespConnectionError` too."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script run by its SHA-1 (EVALSHA), sent in full only when Redis lacks it."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Address:
    """Where and how to connect, from a redis://, rediss:// or unix:// URL, and the TLS
    options a URL does not carry (`traitflow.redis_client.RedisTarget.address` sets them from
    the settings, as it sets redis-py's). The password is left out of the repr."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    #: TLS: the CA file to verify Redis's certificate with (None: the system's CAs), a
    #: client certificate and its key (None: the certificate file holds it), and
    #: whether the certificate must name `host`
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_check_hostname: bool = True

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, None without TLS. The certificate is always
        verified; only the host-name check may be turned off (a certificate made for
        another name, e.g. an IP address)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_file)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_cert_file is not None:
            context.load_cert_chain(self.ssl_cert_file, self.ssl_key_file)
        return context

    @classmethod
    def from_url(cls, url: str) -> Address:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL (redis://, rediss:// or unix://): {url!r}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
            return cls(path=parts.path, username=username, password=password, db=db)
        db_text = parts.path.lstrip("/") or query.get("db", ["0"])[0]
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            username=username,
            password=password,
            db=int(db_text),
        )


class RespClient:
    def __init__(self, address: Address, timeout_s: float = TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        #: (reply future, when it was sent), oldest first
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._connecting = asyncio.Lock()
        self._watchdog: asyncio.TimerHandle | None = None
        #: packed commands not yet written: flushed together at the end of this loop turn
        self._outgoing: list[bytes] = []

    @classmethod
    def from_url(cls, url: str, timeout_s: float = TIMEOUT_S) -> RespClient:
        return cls(Address.from_url(url), timeout_s)

    async def call(self, *args: Arg) -> Any:
        """Run one command; its reply."""
        writer = self._writer if self._writer is not None else await self._connect()
        reply = await self._queue(writer, args)
        if isinstance(reply, hiredis.ReplyError):
            raise RespError(str(reply))
        return reply

    def _queue(self, writer: asyncio.StreamWriter, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        """Queue a command for this loop turn's write; the future of its raw reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, loop.time()))
        if not self._outgoing:
            loop.call_soon(self._flush, writer)
        self._outgoing.append(_pack(args))
        return future

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:  # else its commands failed with the connection
            writer.write(b"".join(self._outgoing))
            self._outgoing.clear()

    async def eval(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a Lua script; loads it into Redis first when Redis does not have it."""
        writer = self._writer if self._writer is not None else await self._connect()
        return await _ScriptCall(self, writer, script, keys, args).result

    def eval_soon(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """`eval`, queued now without awaiting anything (no task): a caller can queue a
        second command before it awaits, and both go out in one write. Resolves to the
        reply, or fails like `eval`."""
        writer = self._writer
        if writer is None:  # not connected: the ordinary path connects first
            return asyncio.ensure_future(self.eval(script, keys, args))
        return _ScriptCall(self, writer, script, keys, args).result

    async def close(self) -> None:
        writer, task = self._writer, self._reader_task
        self._writer = self._reader_task = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # before the first await: a call made while close() awaits reconnects, and the
        # commands it queues are the new connection's, not to be failed (nor their replies
        # then handed to later callers)
        self._fail_pending(RespConnectionError("client closed"))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            address = self.address
            try:
                async with asyncio.timeout(self.timeout_s):
                    if address.path is not None:
                        reader, writer = await asyncio.open_unix_connection(address.path)
                    else:
                        tls = address.tls_context()
                        reader, writer = await asyncio.open_connection(
                            address.host, address.port, ssl=tls
                        )
                    try:
                        await self._handshake(reader, writer)
                    except BaseException:  # AUTH refused, a timeout, cancelled: no leak
                        writer.close()
                        raise
            except RespConnectionError:
                raise  # the handshake's own, already worded
            except TimeoutError as exc:
                raise RespTimeoutError(
                    f"cannot connect to Redis: no answer within {self.timeout_s:g} s"
                ) from exc
            except OSError as exc:
                raise RespConnectionError(f"cannot connect to Redis: {exc}") from exc
            self._reader_task = asyncio.create_task(self._read_replies(reader, writer))
            self._writer = writer
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_later(
                    self.timeout_s / 2, self._watch
                )
            return writer

    def _watch(self) -> None:
        """Every `timeout_s / 2`: drop the connection if Redis has stopped answering."""
        loop = asyncio.get_running_loop()
        if self._pending and loop.time() - self._pending[0][1] > self.timeout_s:
            task, writer = self._reader_task, self._writer
            self._writer = self._reader_task = None
            if task is not None:
                task.cancel()
            if writer is not None:
                writer.close()
            self._fail_pending(
                RespTimeoutError(f"Redis did not answer within {self.timeout_s:g} s")
            )
        self._watchdog = loop.call_later(self.timeout_s / 2, self._watch)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """AUTH and SELECT, before the connection is shared."""
        address = self.address
        commands: list[tuple[Arg, ...]] = []
        if address.password is not None:
            commands.append(
                ("AUTH", address.username, address.password)
                if address.username
                else ("AUTH", address.password)
            )
        if address.db:
            commands.append(("SELECT", address.db))
        parser = hiredis.Reader()
        for command in commands:
            writer.write(_pack(command))
            reply = parser.gets()
            while reply is False:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                parser.feed(data)
                reply = parser.gets()
            if isinstance(reply, hiredis.ReplyError):
                raise RespConnectionError(f"Redis refused {command[0]!r}: {reply}")

    async def _read_replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = hiredis.Reader()
        pending = self._pending
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                parser.feed(data)
                reply = parser.gets()
                while reply is not False:
                    future = pending.popleft()[0]
                    if not future.done():  # its caller may have gone
                        future.set_result(reply)
                    reply = parser.gets()
        except (OSError, IndexError, hiredis.ProtocolError) as exc:
            # IndexError: a reply nothing asked for; ProtocolError: bytes that are not RESP
            if self._writer is writer:
                self._writer = self._reader_task = None
            writer.close()
            self._fail_pending(RespConnectionError(f"connection to Redis lost: {exc}"))

    def _fail_pending(self, error: Exception) -> None:
        self._outgoing.clear()
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_exception(error)


class _ScriptCall:
    """One `eval` or `eval_soon`: EVALSHA, and EVAL if Redis lacks the script. A class
    rather than nested callbacks: a closure that re-arms itself is a reference cycle,
    and at thousands of reads a second those cycles made the cyclic garbage collector
    pause the API for long stretches."""

    __slots__ = ("args", "client", "keys", "result", "script")

    def __init__(
        self,
        client: RespClient,
        writer: asyncio.StreamWriter,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
    ) -> None:
        self.client, self.script, self.keys, self.args = client, script, keys, args
        self.result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        client._queue(writer, command).add_done_callback(self._first)

    def _first(self, reply: asyncio.Future[Any]) -> None:
        value = self._settled(reply)
        writer = self.client._writer
        noscript = isinstance(value, hiredis.ReplyError) and str(value).startswith("NOSCRIPT")
        if noscript and writer is not None:
            command = ("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)
            self.client._queue(writer, command).add_done_callback(self._second)
            return
        self._finish(value)

    def _second(self, reply: asyncio.Future[Any]) -> None:
        self._finish(self._settled(reply))

    def _settled(self, reply: asyncio.Future[Any]) -> Any:
        """The reply's value, or an exception for what became of it."""
        if reply.cancelled():
            return RespConnectionError("command cancelled")
        return reply.exception() or reply.result()

    def _finish(self, value: Any) -> None:
        if self.result.done():  # the caller went away
            return
        if isinstance(value, hiredis.ReplyError):
            self.result.set_exception(RespError(str(value)))
        elif isinstance(value, BaseException):
            self.result.set_exception(value)
        else:
            self.result.set_result(value)
