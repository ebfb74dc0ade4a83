"""Redis Cluster with every key of a deployment under one hash tag (option A of
docs/redis-cluster.md): keys are `{prefix}:...`, so they all hash to one slot and
every guarantee of the single-Redis commit holds unchanged.

Since every key is in one slot, every command goes to one node: the node that serves
the tag's slot. So the clients here are the ordinary ones (redis-py's asyncio client,
`traitflow.resp`) with connections that go to that node, instead of redis-py's
`RedisCluster`: its asyncio `ClusterPipeline` does WATCH transactions, but resolves each
queued command's slot on a new event loop in a new thread, which a worker's commit of
thousands of commands cannot afford, and it refuses MGET in a pipeline.

How the clients follow the slot:
- the owner is read from `CLUSTER SLOTS` of a node known to the client (the URL's,
  then any seen since) when a connection is opened and nobody has said where it is;
- a `MOVED` reply names the new owner: the connection is dropped, the next one goes
  there, and the command is tried again (redis-py: its `Retry`; a commit script that
  was redirected did not run, so it is sent again whole);
- `ASK`, `TRYAGAIN` and `CLUSTERDOWN` (the slot is migrating, or the cluster is
  failing over) are tried again after a pause, until the migration ends and `MOVED`
  says where the keys went. `ASK` is not followed with `ASKING` on purpose: the read
  scripts reach the view key without declaring it, and on the importing node an
  undeclared key still on the source reads as absent (an existing profile as a 404).

TLS (a rediss:// URL, on a cluster with `tls-cluster yes`): every connection, the slot
map's `CLUSTER SLOTS` included, is made with the same TLS options and credentials as
the others (the CA, the client certificate, the hostname check against the node's
address as the cluster announces it), so a node is trusted on the same terms whether
it was named in the URL or learnt from the map.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from traitflow.redis_cluster_access import RedirectRetry, checked_url, tls_options
from traitflow.redis_packing import HiredisPackedConnection
from traitflow.resp import (
    Address,
    Arg,
    RespClient,
    RespConnectionError,
    RespError,
    Script,
)

#: redis-py errors that mean "the slot is elsewhere or moving": tried again
REDIRECTIONS = (MovedError, AskError, TryAgainError, ClusterDownError)
#: tries of a redis-py command that keeps being redirected, with pauses from 10 ms
#: doubling to 1 s: about a minute. A migration that lasts longer fails the command;
#: the worker then tries its batch again (README, "Redis Cluster")
REDIRECT_RETRIES = 64
#: RESP error codes the API's reads wait out (MOVED is followed at once)
_WAIT_CODES = frozenset({"ASK", "TRYAGAIN", "CLUSTERDOWN"})
#: what Redis 7 says when a script reaches an undeclared key that is not on this node
#: (the slot is half-migrated) or the cluster is down
_SCRIPT_REDIRECTS = ("non local key", "cluster is down")


def hash_tag(prefix: str) -> str:
    """The key prefix that puts every key in one slot: `{prefix}` (kept if tagged)."""
    return prefix if is_hash_tag(prefix) else "{" + prefix + "}"


def is_hash_tag(prefix: str) -> bool:
    return len(prefix) > 2 and prefix[0] == "{" and prefix[-1] == "}" and "}" not in prefix[1:-1]


def slot_of(prefix: str) -> int:
    """The slot every key under `prefix` (a hash tag) hashes to."""
    return int(key_slot(prefix.encode()))


#: asks one node (host, port) for its slot map: `CLUSTER SLOTS`'s reply
AskSlots = Callable[[str, int], Awaitable[Any]]


class SlotOwner:
    """Which node serves one slot, as the cluster last said."""

    def __init__(self, slot: int, seeds: Sequence[tuple[str, int]], ask: AskSlots) -> None:
        self.slot = slot
        self._ask = ask
        #: nodes to ask, the last owner first
        self._known: list[tuple[str, int]] = list(dict.fromkeys(seeds))
        self._address: tuple[str, int] | None = None
        self._resolving = asyncio.Lock()

    async def address(self) -> tuple[str, int]:
        if self._address is None:
            async with self._resolving:
                if self._address is None:
                    self._address = await self._resolve()
        return self._address

    def moved(self, slot: int, host: str, port: int) -> None:
        """A `MOVED` reply: the slot is served by host:port now."""
        if slot == self.slot:
            self._address = (host, port)
            self._learn(host, port)
        else:  # not our slot (no key of ours is outside it): ask the cluster again
            self._address = None

    def forget(self) -> None:
        """A connection to the owner failed: ask the cluster before the next one (a
        failover gives the slot to a replica)."""
        self._address = None

    def _learn(self, host: str, port: int) -> None:
        self._known = [(host, port), *(node for node in self._known if node != (host, port))]

    async def _resolve(self) -> tuple[str, int]:
        problems: list[str] = []
        for host, port in list(self._known):
            try:
                ranges = await self._ask(host, port)
            except Exception as exc:  # a node down or refusing: ask the next one
                problems.append(f"{host}:{port}: {exc}")
                continue
            owner: tuple[str, int] | None = None
            for start, end, master, *_ in ranges:
                node_host = master[0].decode() if isinstance(master[0], bytes) else master[0]
                node = (node_host or host, int(master[1]))
                if node not in self._known:
                    self._known.append(node)
                if int(start) <= self.slot <= int(end):
                    owner = node
            if owner is not None:
                self._learn(*owner)
                return owner
            problems.append(f"{host}:{port}: no node serves slot {self.slot}")
        raise ConnectionError(
            "cannot find the Redis Cluster node that serves traitflow's keys: "
            + "; ".join(problems)
        )


class SlotOwnerConnection(HiredisPackedConnection):
    """A redis-py connection to the node that serves `owner`'s slot (see the module's
    docstring); a `MOVED` reply re-points the connections opened after it."""

    def __init__(self, *, owner: SlotOwner, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.owner = owner

    async def _connect(self) -> None:
        self.host, self.port = await self.owner.address()
        try:
            await super()._connect()  # type: ignore[no-untyped-call]
        except OSError:
            self.owner.forget()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except MovedError as moved:
            self.owner.moved(moved.slot_id, moved.host, moved.port)
            raise


class SlotOwnerSSLConnection(SlotOwnerConnection, SSLConnection):
    """`SlotOwnerConnection` over TLS (a rediss:// URL): redis-py's SSL context from
    the `ssl_*` options, the host checked against the owner's address."""


def _credentials(url: str, options: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(url)
    username = options.get("username") or (unquote(parts.username) if parts.username else None)
    password = options.get("password")
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    return {"username": username, "password": password}


def cluster_client(url: str, prefix: str, **options: Any) -> aioredis.Redis:
    """A redis-py asyncio client whose commands go to the node serving `prefix`'s slot
    (`prefix`: a hash tag), following MOVED and waiting out ASK and TRYAGAIN. `url`
    names any node of the cluster (redis://; its db must be 0, the only one a cluster
    has); `options` are what redis-py's `from_url` takes."""
    checked_url(url)
    parts = urlsplit(url)
    if not is_hash_tag(prefix):
        raise ValueError(f"Redis Cluster mode needs a hash tag prefix, not {prefix!r}")
    seed = (parts.hostname or "127.0.0.1", parts.port or 6379)
    credentials = _credentials(url, options) | tls_options(url, options)

    async def ask(host: str, port: int) -> Any:
        node = aioredis.Redis(host=host, port=port, socket_connect_timeout=5.0, **credentials)
        try:
            return await node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        finally:
            await node.aclose()

    owner = SlotOwner(slot_of(prefix), [seed], ask)
    tls = parts.scheme == "rediss"
    return aioredis.Redis.from_url(
        url,
        connection_class=SlotOwnerSSLConnection if tls else SlotOwnerConnection,
        owner=owner,
        retry=RedirectRetry(ExponentialBackoff(cap=1.0, base=0.01), REDIRECT_RETRIES),
        retry_on_error=list(REDIRECTIONS),
        **options,
    )


class SyncSlotOwner:
    """The node serving `slot`, for blocking clients: asked of the URL's node when the
    first connection opens (not when the client is made, so that a node down or a TLS
    refusal is a command's error, which the start checks word and wait out)."""

    def __init__(self, url: str, slot: int, options: dict[str, Any]) -> None:
        self.url, self.slot, self.options = url, slot, options
        self._address: tuple[str, int] | None = None

    def address(self) -> tuple[str, int]:
        if self._address is None:
            seed = redis.Redis.from_url(self.url, **self.options)
            try:
                ranges = seed.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            finally:
                seed.close()
            for start, end, master, *_ in ranges:
                if int(start) <= self.slot <= int(end):
                    host = master[0].decode() if isinstance(master[0], bytes) else master[0]
                    self._address = (host or urlsplit(self.url).hostname or "", int(master[1]))
                    break
            else:
                raise redis.ConnectionError(f"no node of the Redis Cluster serves slot {self.slot}")
        return self._address


class SyncSlotOwnerConnection(redis.connection.Connection):
    def __init__(self, *, owner: SyncSlotOwner, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.owner = owner

    def _connect(self) -> Any:
        self.host, self.port = self.owner.address()
        return super()._connect()  # type: ignore[no-untyped-call]


class SyncSlotOwnerSSLConnection(SyncSlotOwnerConnection, redis.connection.SSLConnection):
    """Over TLS: the host checked against the owner's address."""


def cluster_sync_client(url: str, prefix: str, **options: Any) -> redis.Redis:
    """A blocking redis-py client of the node that serves `prefix`'s slot when it is
    made, or, if no node answered then, when it first connects (start checks, CLI
    commands, scripts: short-lived, so it does not follow a later MOVED; one that meets
    it fails, and is run again). A rediss:// URL: both the slot map's connection and the
    owner's are made with `options`' TLS settings."""
    checked_url(url)
    slot = slot_of(hash_tag(prefix) if not is_hash_tag(prefix) else prefix)
    owner = SyncSlotOwner(url, slot, options)
    parts = urlsplit(url)
    try:  # the owner now if the cluster answers (its address in the client's), else later
        host, port = owner.address()
        userinfo, at, _ = parts.netloc.rpartition("@")
        url = parts._replace(netloc=f"{userinfo}{at}{host}:{port}").geturl()
    except redis.RedisError:
        pass
    tls = parts.scheme == "rediss"
    return redis.Redis.from_url(
        url,
        connection_class=SyncSlotOwnerSSLConnection if tls else SyncSlotOwnerConnection,
        owner=owner,
        **options,
    )


class ClusterRespClient(RespClient):
    """`traitflow.resp`'s client on the node that serves `owner`'s slot: a `MOVED`
    reply reconnects it there and the command is sent again; `ASK`, `TRYAGAIN`,
    `CLUSTERDOWN` and a script's "non local key" are tried again after a pause for up
    to `timeout_s`, then raised (the API answers 503). A read stays one round trip
    when nothing moves."""

    def __init__(self, address: Address, owner: SlotOwner, timeout_s: float) -> None:
        super().__init__(address, timeout_s)
        self.owner = owner
        #: MOVED replies followed: a command failed by the reconnect they cause is sent
        #: again if one happened while it was in flight
        self._moves = 0

    @classmethod
    def for_prefix(cls, address: Address, prefix: str, timeout_s: float) -> ClusterRespClient:
        """A client on the node serving `prefix`'s slot; `address` names any node and
        says how to connect (credentials, TLS)."""
        if address.path is not None:
            raise ValueError("Redis Cluster mode takes a host and port, not a socket path")
        if not is_hash_tag(prefix):
            raise ValueError(f"Redis Cluster mode needs a hash tag prefix, not {prefix!r}")

        async def ask(host: str, port: int) -> Any:
            node = RespClient(dataclasses.replace(address, host=host, port=port), timeout_s)
            try:
                return await node.call("CLUSTER", "SLOTS")
            finally:
                await node.close()

        seed = (address.host or "127.0.0.1", address.port)
        return cls(address, SlotOwner(slot_of(prefix), [seed], ask), timeout_s)

    async def _connect(self) -> asyncio.StreamWriter:
        try:
            host, port = await self.owner.address()
        except RespConnectionError:
            raise
        except ConnectionError as exc:  # no node answered (down, TLS refused): as a lost
            raise RespConnectionError(str(exc)) from exc  # connection (the API's 503)
        if (self.address.host, self.address.port) != (host, port):
            self.address = dataclasses.replace(self.address, host=host, port=port)
        try:
            return await super()._connect()
        except RespConnectionError:
            self.owner.forget()
            raise

    async def call(self, *args: Arg) -> Any:
        return await self._follow(lambda: RespClient.call(self, *args))

    async def eval(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self._follow(lambda: RespClient.eval(self, script, keys, args))

    def eval_soon(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """Queued now, as `RespClient.eval_soon`; only a redirected one is sent again."""
        first = RespClient.eval_soon(self, script, keys, args)
        return asyncio.ensure_future(
            self._follow(lambda: RespClient.eval(self, script, keys, args), first)
        )

    async def _follow(
        self, attempt: Callable[[], Awaitable[Any]], first: Awaitable[Any] | None = None
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pause = 0.01
        while True:
            moves = self._moves
            try:
                if first is not None:
                    pending, first = first, None
                    return await pending
                return await attempt()
            except RespError as error:
                if error.code == "MOVED":
                    await self._moved(str(error))
                elif not (
                    error.code in _WAIT_CODES or any(t in str(error) for t in _SCRIPT_REDIRECTS)
                ):
                    raise
                if loop.time() > deadline:
                    raise
                if error.code != "MOVED":
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.25)
            except RespConnectionError:
                # dropped by a MOVED another command followed: send it to the new owner
                if self._moves == moves or loop.time() > deadline:
                    raise

    async def _moved(self, message: str) -> None:
        """`MOVED {slot} {host}:{port}`: reconnect there (once for all the commands
        that were in flight to the old owner)."""
        _, slot, node = message.split(" ", 2)
        host, _, port = node.rpartition(":")
        self.owner.moved(int(slot), host, int(port))
        if (self.address.host, self.address.port) != (host, int(port)):
            self._moves += 1
            await self.close()
