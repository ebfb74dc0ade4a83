"""A secured Kafka listener for the tests: TLS and SASL in front of a plain Tansu.

Why: the Tansu 0.6.0 binary the tests run cannot be secured itself. It has
`--cert`/`--key` flags, but clap refuses the two together and the broker never wraps a
connection in TLS (its `TlsAcceptor` is made and left unused); it has
`--authentication`, but its SASL offers no PLAIN (`NoSharedMechanism`) and its storage
engines (memory, S3) keep no SCRAM credentials (`tansu user create` is accepted and
forgotten), so every login fails. This gateway is what a secured broker's listener
does for a client, on a loopback port:

- TLS (`tls`, a server context; one that requires client certificates checks them);
- SASL (`users`): it answers ApiVersions from the broker, then SaslHandshake and
  SaslAuthenticate itself (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, RFC 5802 without
  channel binding), refusing wrong credentials as Kafka does (error 58, then the
  connection is closed) and any other request before authentication (closed);
- then every byte both ways, unchanged, to the broker.

The broker must advertise the gateway's address (`secured_broker`), since clients
connect to the address in the metadata. Runs in a thread of its own, with its own loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from traitflow.services import Daemon, free_port, port_open, tansu_binary

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
NONE, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 0, 33, 34, 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class AuthenticationFailed(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


class Scram:
    """The server side of one SCRAM exchange (RFC 5802, no channel binding)."""

    ITERATIONS = 4096

    def __init__(self, mechanism: str, users: Mapping[str, str]) -> None:
        self.hash = hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha512
        self.users = users
        self.user: str | None = None
        self.first_bare = self.server_first = self.nonce = ""
        self.salt = secrets.token_bytes(16)

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def step(self, data: bytes) -> tuple[bytes, bool]:
        """The reply to the client's message, and whether the exchange is over."""
        message = data.decode()
        if self.user is None:  # client-first: n,,n=user,r=nonce
            if not message.startswith("n,,"):
                raise AuthenticationFailed("channel binding is not supported")
            self.first_bare = message[3:]
            fields = dict(part.split("=", 1) for part in self.first_bare.split(","))
            self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
            self.nonce = fields["r"] + secrets.token_urlsafe(18)
            salt = base64.b64encode(self.salt).decode()
            self.server_first = f"r={self.nonce},s={salt},i={self.ITERATIONS}"
            return self.server_first.encode(), False
        # client-final: c=biws,r=nonce,p=proof
        without_proof, _, proof = message.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        password = self.users.get(self.user)
        if fields.get("r") != self.nonce or password is None:
            raise AuthenticationFailed(self.user)
        salted = hashlib.pbkdf2_hmac(
            self.hash().name, password.encode(), self.salt, self.ITERATIONS
        )
        client_key = self._hmac(salted, b"Client Key")
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = self._hmac(self.hash(client_key).digest(), auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            raise AuthenticationFailed(self.user)
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return b"v=" + base64.b64encode(server_signature), True


class Plain:
    """PLAIN (RFC 4616): authzid NUL user NUL password, in one message."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = users
        self.user: str | None = None

    def step(self, data: bytes) -> tuple[bytes, bool]:
        _, user, password = data.decode().split("\0")
        self.user = user
        known = self.users.get(user)
        if known is None or not hmac.compare_digest(known.encode(), password.encode()):
            raise AuthenticationFailed(user)
        return b"", True


class KafkaGateway:
    """TLS and/or SASL on `port`, the broker on `upstream_port` behind it."""

    def __init__(
        self,
        upstream_port: int,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
        mechanisms: tuple[str, ...] = MECHANISMS,
    ) -> None:
        self.upstream_port, self.port = upstream_port, port
        self.tls, self.users, self.mechanisms = tls, users, mechanisms
        #: (user, mechanism) of each accepted login; users refused; TLS handshakes
        #: that failed
        self.logins: Counter[tuple[str, str]] = Counter()
        self.refused: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> KafkaGateway:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        self.server = started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.tls)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.users is not None and not await self._authenticate(
                reader, writer, up_reader, up_writer
            ):
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve one client until it authenticated (True) or was refused (False)."""
        assert self.users is not None
        session: Scram | Plain | None = None
        mechanism = ""
        while True:
            request = await read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", request[:8])
            (client_id_size,) = struct.unpack(">h", request[8:10])
            body = request[10 + max(client_id_size, 0) :]
            header = struct.pack(">i", correlation)
            if api_key == API_VERSIONS:  # the broker's answer (it lists the SASL APIs)
                up_writer.write(frame(request))
                writer.write(frame(await read_frame(up_reader)))
            elif api_key == SASL_HANDSHAKE:
                (size,) = struct.unpack(">h", body[:2])
                mechanism = body[2 : 2 + size].decode()
                offered = list(self.mechanisms)
                code = NONE if mechanism in offered else UNSUPPORTED_SASL_MECHANISM
                listed = struct.pack(">i", len(offered)) + b"".join(string(m) for m in offered)
                writer.write(frame(header + struct.pack(">h", code) + listed))
                if code == NONE:
                    session = (
                        Plain(self.users) if mechanism == "PLAIN" else Scram(mechanism, self.users)
                    )
            elif api_key == SASL_AUTHENTICATE and session is not None:
                (size,) = struct.unpack(">i", body[:4])
                lifetime = struct.pack(">q", 0) if version >= 1 else b""
                try:
                    reply, done = session.step(body[4 : 4 + size])
                except (AuthenticationFailed, ValueError, KeyError):
                    self.refused.append(session.user or "?")
                    message = (
                        "Authentication failed during authentication due to invalid "
                        f"credentials with SASL mechanism {mechanism}"
                    )
                    error = struct.pack(">h", SASL_AUTHENTICATION_FAILED) + string(message)
                    writer.write(frame(header + error + struct.pack(">i", 0) + lifetime))
                    await writer.drain()
                    return False
                ok = struct.pack(">h", NONE) + string(None)
                writer.write(frame(header + ok + struct.pack(">i", len(reply)) + reply + lifetime))
                if done:
                    await writer.drain()
                    self.logins[(session.user or "?", mechanism)] += 1
                    return True
            else:  # as Kafka: nothing else before authentication
                return False
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def server_tls(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS server context with `cert`; with `client_ca`, clients must present a
    certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


@contextlib.contextmanager
def secured_broker(
    directory: Path,
    *,
    tls: ssl.SSLContext | None = None,
    users: Mapping[str, str] | None = None,
    mechanisms: tuple[str, ...] = MECHANISMS,
) -> Iterator[KafkaGateway]:
    """A Tansu broker (memory storage) on a port of its own, advertising the gateway's
    address, and the gateway in front of it: clients reach the broker only through the
    gateway (`gateway.port`)."""
    broker_port, gateway_port = free_port(), free_port()
    daemon = Daemon("broker", directory)
    process = daemon.spawn(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{gateway_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", broker_port):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.stderr.write(daemon.log_file.read_text(errors="replace"))
                raise RuntimeError("the broker behind the gateway did not start")
            time.sleep(0.05)
        with KafkaGateway(
            broker_port, gateway_port, tls=tls, users=users, mechanisms=mechanisms
        ) as gateway:
            yield gateway
    finally:
        daemon.stop()
