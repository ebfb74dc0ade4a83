"""How the spread layout's store talks to the cluster: commands on redis-py's cluster
pipeline (each node its share, all nodes at once), scripts by SHA-1, commands refused
while a slot moves sent again, and scripts run once per node over keys of many slots.

Why per node: a batch touches hundreds of buckets, each its own slot; a command per
key or per bucket is most of a batch's time in the client (docs/redis-cluster.md,
"Status of option B"). Redis 7 runs a script flagged `allow-cross-slot-keys` over keys
of every slot its node serves. A key its node does not have (a slot moved, or moving
and the key gone) stops the script with "non local key", never reads as absent: those
keys are then sent the slow way, each where its slot is. A script that writes must be
safe to run again after stopping part way (`traitflow.spread_claims.FINALIZE_ON_NODE`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    NoScriptError,
    TryAgainError,
)

from traitflow.redis_client import Redis, RedisTarget

#: replies that say a command did not run because its slot is moving or the cluster
#: is failing over: sent again after a pause, for up to `WAIT_OUT_S`
_WAIT = (TryAgainError, ClusterDownError, AskError)
WAIT_OUT_S = 60.0


def _did_not_run(reply: object) -> bool:
    """A reply of a command the cluster refused whole while a slot moves: one of
    `_WAIT`, or redis-py's "TTL exhausted" after it followed as many of them as it
    will (redirections, never a lost connection)."""
    if isinstance(reply, _WAIT):
        return True
    return isinstance(reply, ClusterError) and "TTL exhausted" in str(reply)


def cluster_client(url: Redis) -> RedisCluster:
    """The asyncio cluster client of the spread layout's processes: `url` (settings, a
    target or a URL naming any node) with its TLS and credentials."""
    target = RedisTarget.of(url)
    return RedisCluster.from_url(target.bare_url, **target.redis_py_kwargs())


def keys_here(first: int, step: int = 1) -> str:
    """Lua for the start of a per-node script whose keys are ARGV[first], then every
    `step`th argument: return {'moved'}, having run nothing, if one of them is not on
    this node (its slot moved or moving: "non local key"). A script that writes must
    check every key before its first write; `ClusterCalls.by_node` then sends its calls
    one by one where their slots are."""
    return (
        f"for i = {first}, #ARGV, {step} do\n"
        "  local here = redis.pcall('EXISTS', ARGV[i])\n"
        "  if type(here) == 'table' and here.err then return {'moved'} end\n"
        "end\n"
    )


#: Reads keys of any slots its node serves, in one command (Redis 7's
#: `allow-cross-slot-keys`). A key of a slot the node does not serve, or of one
#: migrating away whose key has left, is refused ("non local key"), never read as absent.
GET_ON_NODE = """#!lua flags=allow-cross-slot-keys,no-writes
local found = {}
for i, key in ipairs(ARGV) do found[i] = redis.call('GET', key) end
return found
"""


#: Commands of keys of every slot its node serves, in one script: ARGV, per command,
#: its argument count then its arguments, its key second. Every key is touched first:
#: if one is not on this node the script returns {'moved'} having run nothing; else
#: the commands' replies.
MANY_ON_NODE = """#!lua flags=allow-cross-slot-keys
local at, last = 1, #ARGV
while at <= last do
  local here = redis.pcall('EXISTS', ARGV[at + 2])
  if type(here) == 'table' and here.err then return {'moved'} end
  at = at + tonumber(ARGV[at]) + 1
end
local out = {}
at = 1
while at <= last do
  local size = tonumber(ARGV[at])
  out[#out + 1] = redis.call(unpack(ARGV, at + 1, at + size))
  at = at + size + 1
end
return out
"""


class ClusterCalls:
    """What the spread store and its protocol send through (see the module's
    docstring): one client, the scripts it has sent."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        #: script source -> its SHA-1, for the scripts sent so far
        self._scripts: dict[str, str] = {}
        #: how long commands refused while a slot moves are sent again (s): a worker
        #: waits a migration out; the API answers 503 sooner (`api.spread_store`)
        self.wait_out_s = WAIT_OUT_S

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands on the cluster pipeline: each node's at once, nodes in parallel.
        A script ("EVAL", source, ...) is sent by its SHA-1; a node that lacks it (new,
        restarted, failed over) is given every script and the scripts it refused are
        sent again (a NOSCRIPT reply ran nothing)."""
        if not calls:
            return []
        sent = [self._by_sha(call) for call in calls]
        replies = await self._send(sent)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.wait_out_s, 0.01
        while True:
            missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                for source in self._scripts:
                    await self.client.script_load(source)
            waiting = [n for n, reply in enumerate(replies) if _did_not_run(reply)]
            again = sorted({*missing, *waiting})
            if not again or loop.time() > deadline:
                break
            if waiting:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.25)
            for n, reply in zip(again, await self._send([sent[n] for n in again]), strict=True):
                replies[n] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def on_nodes(
        self,
        keys: Sequence[str],
        call: Callable[[list[int]], tuple[Any, ...]],
        replied: Callable[[list[int], Any], None] | None = None,
    ) -> list[int]:
        """One script per node: `call(ns)` for the indexes `ns` of the `keys` that node
        serves (by the client's slot map), all nodes at once; `replied(ns, reply)` with
        each node's reply. Returns the indexes of the keys whose node refused its
        script, to be sent the slow way."""
        if not keys:
            return []
        manager = self.client.nodes_manager
        if not manager.slots_cache:  # the client has not met the cluster yet
            await self.client.initialize()
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for n, key in enumerate(keys):
            node = manager.get_node_from_slot(int(key_slot(key.encode())))
            by_node.setdefault(node.name, (node, []))[1].append(n)
        groups = list(by_node.values())
        pipe = self.client.pipeline()
        for node, ns in groups:
            pipe.execute_command(*self._by_sha(call(ns)), target_nodes=node)
        refused: list[int] = []
        for (_, ns), reply in zip(groups, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, NoScriptError):  # loaded for the next time
                for source in self._scripts:
                    await self.client.script_load(source)
            if isinstance(reply, Exception):
                refused += ns
            elif replied is not None:
                replied(ns, reply)
        return refused

    async def many(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands whose key is their second part (not scripts), one script per node
        (`MANY_ON_NODE`), those of a node that refused it one by one where their slot
        is; the replies in order."""
        return await self.by_node(
            calls, MANY_ON_NODE, lambda call: [len(call), *call], lambda call: str(call[1])
        )

    async def by_node(
        self,
        calls: Sequence[tuple[Any, ...]],
        script: str,
        arguments: Callable[[tuple[Any, ...]], list[Any]],
        key: Callable[[tuple[Any, ...]], str],
        head: Sequence[Any] = (),
    ) -> list[Any]:
        """`calls` (each a command on the key `key(call)`) as `script` once per node,
        given `head` then `arguments(call)` of each of that node's calls; a node that
        refused it, or answered {'moved'}, has its calls sent one by one. The replies
        in order."""
        replies: list[Any] = [None] * len(calls)
        moved: list[int] = []

        def node_call(ns: list[int]) -> tuple[Any, ...]:
            return ("EVAL", script, 0, *head, *(a for n in ns for a in arguments(calls[n])))

        def replied(ns: list[int], reply: Any) -> None:
            if reply and reply[0] == b"moved":
                moved.extend(ns)
                return
            for n, one in zip(ns, reply, strict=True):
                replies[n] = one

        slow = [*await self.on_nodes([key(c) for c in calls], node_call, replied), *moved]
        for n, reply in zip(slow, await self._run([calls[n] for n in slow]), strict=True):
            replies[n] = reply
        return replies

    async def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys` (None: absent), one script per node that serves them
        (`on_nodes`), the refused ones one by one where their slot is."""
        found: list[bytes | None] = [None] * len(keys)

        def replied(ns: list[int], reply: Any) -> None:
            for n, value in zip(ns, reply, strict=True):
                found[n] = value

        refused = await self.on_nodes(
            keys, lambda ns: ("EVAL", GET_ON_NODE, 0, *(keys[n] for n in ns)), replied
        )
        if refused:
            for n, value in zip(
                refused, await self._run([("GET", keys[n]) for n in refused]), strict=True
            ):
                found[n] = value
        return found

    def _by_sha(self, call: tuple[Any, ...]) -> tuple[Any, ...]:
        if call[0] != "EVAL":
            return call
        source = call[1]
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = hashlib.sha1(source.encode()).hexdigest()
        return ("EVALSHA", sha, *call[2:])

    async def _send(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline()
        for call in calls:
            pipe.execute_command(*call)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
