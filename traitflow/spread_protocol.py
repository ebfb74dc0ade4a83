"""The steps of a spread-layout commit against the cluster: claim, commit the buckets,
finalize, drop the intents; and recovery of what a dead worker left
(`traitflow.spread_claims` says why each step is there).

Every step is one round trip of wall-clock time: its scripts, one per key (claims),
bucket or slot (finalize), are queued on redis-py's cluster pipeline, which sends each
node its share at once, all nodes in parallel.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
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

from traitflow import spread_claims as claims
from traitflow.commit_script import COMMIT, found_values, script_arguments
from traitflow.spread_claims import ABORTED, CLAIM, CLAIMED, DECIDE, FINALIZE, Op
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_plan import BucketCommit, Claim, SpreadCommit
from traitflow.store import Conflict

log = logging.getLogger(__name__)

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


#: Reads keys of any slots its node serves, in one command (Redis 7's
#: `allow-cross-slot-keys`). A key of a slot the node does not serve, or of one
#: migrating away whose key has left, is refused ("non local key"), never read as absent.
GET_ON_NODE = """#!lua flags=allow-cross-slot-keys,no-writes
local found = {}
for i, key in ipairs(ARGV) do found[i] = redis.call('GET', key) end
return found
"""

#: how long an "aborted" intent stays: far longer than any lease, so that a commit
#: whose claims were rolled back can never commit after it (ms)
ABORTED_TTL_MS = 86_400_000


class SpreadProtocol:
    """The cluster side of `traitflow.spread_plan`'s commits, for one store."""

    def __init__(self, client: RedisCluster, layout: SpreadLayout, clock: Callable[[], int]):
        self.client = client
        self.layout = layout
        self.clock = clock
        #: intents being dropped after their commit finalized (not waited for)
        self._dropping: set[asyncio.Task[None]] = set()
        #: script source -> its SHA-1, for the scripts sent so far
        self._scripts: dict[str, str] = {}

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
        deadline, pause = loop.time() + WAIT_OUT_S, 0.01
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

    async def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys` (None: absent), one script per node that serves them,
        all nodes at once. A node that refuses its script (a slot moved or moving)
        has its keys read one by one, each sent where its slot is."""
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
            call = self._by_sha(("EVAL", GET_ON_NODE, 0, *(keys[n] for n in ns)))
            pipe.execute_command(*call, target_nodes=node)
        replies = await pipe.execute(raise_on_error=False)
        found: list[bytes | None] = [None] * len(keys)
        refused: list[int] = []
        for (_, ns), reply in zip(groups, replies, strict=True):
            if isinstance(reply, NoScriptError):  # loaded for the next time
                await self.client.script_load(GET_ON_NODE)
            if isinstance(reply, Exception):
                refused += ns
                continue
            for n, value in zip(ns, reply, strict=True):
                found[n] = value
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

    # --- claim -------------------------------------------------------------------

    async def claim(self, spread: SpreadCommit) -> None:
        """Claim every key of `spread`'s claims, or release those taken and raise the
        `Conflict` naming the others (recovering first the ones a dead commit holds)."""
        calls = []
        for c in spread.claims:
            check, want = ("0", b"") if c.want is None else ("1", c.want)
            calls.append(("EVAL", CLAIM, 1, c.key, check, want, c.value))
        replies = await self._run(calls)
        taken: list[Claim] = []
        refused: list[Claim] = []
        held_by_others: list[tuple[str, bytes]] = []
        for c, (status, value) in zip(spread.claims, replies, strict=True):
            if int(status) == 0:
                taken.append(c)
                continue
            refused.append(c)
            if int(status) == 1:
                held_by_others.append((c.key, value))
        if not refused:
            return
        await self.finalize([_undo(c, spread.commit) for c in taken])
        live = await self.recover_all(held_by_others)
        if live:  # another commit is between its steps: give it a moment
            await asyncio.sleep(random.uniform(0.001, 0.005))
        raise Conflict(
            [c.guarded for c in refused if isinstance(c.guarded, tuple)],
            [c.guarded for c in refused if isinstance(c.guarded, str)],
        )

    async def release_claims(self, spread: SpreadCommit) -> None:
        await self.finalize([_undo(c, spread.commit) for c in spread.claims])

    # --- commit ------------------------------------------------------------------

    async def commit_buckets(self, spread: SpreadCommit) -> dict[int, list[bytes | None]]:
        """Each bucket's script; the values found by those that did not commit."""
        parts = list(spread.buckets.values())
        calls = []
        for part in parts:
            checks = {key: want for key, (want, _) in part.checks.items()}
            keys, args = script_arguments(checks, part.commands)
            calls.append(("EVAL", COMMIT, len(keys), *keys, *args))
        replies = await self._run(calls)
        refused: dict[int, list[bytes | None]] = {}
        for part, reply in zip(parts, replies, strict=True):
            found = found_values(reply)
            if found is not None:
                refused[part.bucket] = found
        return refused

    # --- finalize ----------------------------------------------------------------

    async def finalize(self, ops: Iterable[Op]) -> None:
        """Run steps, one `FINALIZE` script per slot, all slots at once."""
        by_slot: dict[int, list[Op]] = {}
        for op in ops:
            by_slot.setdefault(int(key_slot(str(op[1]).encode())), []).append(op)
        calls = []
        for slot_ops in by_slot.values():
            keys, args = claims.finalize_arguments(slot_ops)
            calls.append(("EVAL", FINALIZE, len(keys), *keys, *args))
        await self._run(calls)

    def drop_intents(self, commit: str, parts: Iterable[BucketCommit]) -> None:
        """Drop the intents of a finalized commit, without waiting: one left behind is
        run again by `recover_intents`, which does nothing twice."""
        buckets = [part.bucket for part in parts if part.forward]
        if buckets:
            task = asyncio.ensure_future(self._drop(commit, buckets))
            self._dropping.add(task)
            task.add_done_callback(self._dropped)

    def _dropped(self, task: asyncio.Task[None]) -> None:
        self._dropping.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("an intent was not dropped (recovery will): %s", error)

    async def _drop(self, commit: str, buckets: Iterable[int]) -> None:
        calls: list[tuple[Any, ...]] = []
        for bucket in buckets:
            keys = self.layout.keys(bucket)
            calls += [("DEL", keys.intent(commit)), ("ZREM", keys.intents(), commit)]
        await self._run(calls)

    async def settle(self) -> None:
        """Wait for the intents being dropped (before closing the client)."""
        if self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)

    # --- recovery ----------------------------------------------------------------

    async def recover_all(self, found: Iterable[tuple[str, bytes | None]]) -> bool:
        """Recover the claims and locks among `found` (key, value) whose lease is over;
        whether one whose lease is not over was among them."""
        live = False
        for key, value in found:
            held = claims.held(value)
            if held is None:
                continue
            if held.deadline > self.clock():
                live = True
            else:
                await self.recover(key, held)
        return live

    async def recover(self, key: str, held: claims.Held) -> None:
        """Finish or undo the commit that left `held` on `key` and died (its lease is
        over): roll forward if its bucket's intent is there, else back."""
        undo = claims.release if held.kind == CLAIMED else claims.unlock
        if held.owner < 0:
            await self.finalize([undo(key, held.commit)])
            return
        intent_key = self.layout.keys(held.owner).intent(held.commit)
        (intent,) = await self._run([("EVAL", DECIDE, 1, intent_key, ABORTED_TTL_MS)])
        if intent is None:
            log.info("rolled back commit %s (its claim on %s expired)", held.commit, key)
            await self.finalize([undo(key, held.commit)])
            return
        log.info("rolled forward commit %s (its claim on %s expired)", held.commit, key)
        await self.finalize(claims.decode_intent(intent))
        await self._drop(held.commit, [held.owner])

    async def recover_intents(self) -> int:
        """Finish every committed intent left (a worker died after its buckets
        committed): run at start, before records are taken again. Finishing one whose
        worker is alive does nothing twice. Returns how many were run."""
        buckets = range(self.layout.buckets)
        listed = await self._run(
            [("ZRANGE", self.layout.keys(b).intents(), 0, -1) for b in buckets]
        )
        pending = [
            (b, cid.decode()) for b, cids in zip(buckets, listed, strict=True) for cid in cids
        ]
        intents = await self._run([("GET", self.layout.keys(b).intent(cid)) for b, cid in pending])
        ops: list[Op] = []
        for raw in intents:
            if raw is not None and raw != ABORTED:
                ops += claims.decode_intent(raw)
        await self.finalize(ops)
        calls: list[tuple[Any, ...]] = []
        for bucket, cid in pending:
            keys = self.layout.keys(bucket)
            calls += [("DEL", keys.intent(cid)), ("ZREM", keys.intents(), cid)]
        await self._run(calls)
        return sum(1 for raw in intents if raw is not None and raw != ABORTED)


def _undo(c: Claim, commit: str) -> Op:
    return claims.unlock(c.key, commit) if c.lock else claims.release(c.key, commit)
