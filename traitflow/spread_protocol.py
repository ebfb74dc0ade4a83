"""The steps of a spread-layout commit against the cluster: claim, commit the buckets,
finalize, drop the intents; and recovery of what a dead worker left
(`traitflow.spread_claims` says why each step is there).

Every step is one round trip of wall-clock time: its scripts, one per key (claims),
bucket or slot (finalize), are queued on redis-py's cluster pipeline, which sends each
node its share at once, all nodes in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from traitflow import spread_claims as claims
from traitflow.commit_script import COMMIT, found_values, script_arguments
from traitflow.spread_claims import (
    ABORTED,
    CLAIM,
    CLAIM_ON_NODE,
    CLAIMED,
    DECIDE,
    FINALIZE,
    FINALIZE_ON_NODE,
    Op,
)
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls
from traitflow.spread_plan import BucketCommit, Claim, SpreadCommit
from traitflow.store import Conflict

log = logging.getLogger(__name__)

#: `traitflow.commit_script.COMMIT` for every bucket a node serves, in one script
#: (`traitflow.spread_nodes`). ARGV, per bucket: n checks, k keys, c command arguments,
#: its k keys (the checked ones first), the n values they must have, then its
#: commands as `COMMIT` takes them. Every key is touched first: if one is not on this
#: node (a slot moved or moving) the script returns {'moved'} having written nothing.
#: Else each bucket is checked and written as `COMMIT` does it, alone: the reply has,
#: per bucket, 0 or the values its checked keys had.
COMMIT_ON_NODE = """#!lua flags=allow-cross-slot-keys
local at = 1
local last = #ARGV
while at <= last do
  local n, k, c = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  for i = at + 3, at + 2 + k do
    local here = redis.pcall('EXISTS', ARGV[i])
    if type(here) == 'table' and here.err then return {'moved'} end
  end
  at = at + 3 + k + n + c
end
local out = {}
at = 1
while at <= last do
  local n, k, c = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local keys, wants = at + 3, at + 3 + k
  local found, stale = {}, false
  for i = 0, n - 1 do
    local have = redis.call('GET', ARGV[keys + i])
    found[i + 1] = have
    if (have or '') ~= ARGV[wants + i] then stale = true end
  end
  local first, stop = wants + n, wants + n + c - 1
  if stale then
    out[#out + 1] = found
  else
    local p = first
    while p <= stop do
      local size = tonumber(ARGV[p])
      redis.call(unpack(ARGV, p + 1, p + size))
      p = p + size + 1
    end
    out[#out + 1] = 0
  end
  at = stop + 1
end
return out
"""

#: how long an "aborted" intent stays: far longer than any lease, so that a commit
#: whose claims were rolled back can never commit after it (ms)
ABORTED_TTL_MS = 86_400_000


class SpreadProtocol(ClusterCalls):
    """The cluster side of `traitflow.spread_plan`'s commits, for one store."""

    def __init__(self, client: RedisCluster, layout: SpreadLayout, clock: Callable[[], int]):
        super().__init__(client)
        self.layout = layout
        self.clock = clock
        #: intents being dropped after their commit finalized (not waited for)
        self._dropping: set[asyncio.Task[None]] = set()

    # --- claim -------------------------------------------------------------------

    async def claim(self, spread: SpreadCommit) -> None:
        """Claim every key of `spread`'s claims, or release those taken and raise the
        `Conflict` naming the others (recovering first the ones a dead commit holds)."""
        calls = []
        for c in spread.claims:
            check, want = ("0", b"") if c.want is None else ("1", c.want)
            calls.append(("EVAL", CLAIM, 1, c.key, check, want, c.value))
        replies = await self.by_node(
            calls, CLAIM_ON_NODE, lambda call: list(call[3:]), lambda call: str(call[3])
        )
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
        """Each bucket's check and writes, as one script per node over its buckets
        (`COMMIT_ON_NODE`); the buckets of a node that refused its script (a slot moved
        or moving: it wrote nothing) as one `COMMIT` each, where its slot is. Returns
        the values found by the buckets that did not commit."""
        parts = list(spread.buckets.values())
        arguments = [
            script_arguments({k: want for k, (want, _) in part.checks.items()}, part.commands)
            for part in parts
        ]
        replies: list[Any] = [None] * len(parts)

        def node_call(ns: list[int]) -> tuple[Any, ...]:
            args: list[Any] = []
            for n in ns:
                keys, argv = arguments[n]
                checked = len(parts[n].checks)
                commands = argv[1 + checked :]
                args += [checked, len(keys), len(commands), *keys, *argv[1 : 1 + checked]]
                args += commands
            return ("EVAL", COMMIT_ON_NODE, 0, *args)

        def replied(ns: list[int], reply: Any) -> None:
            if reply and reply[0] == b"moved":
                refused_here.extend(ns)
                return
            for n, found in zip(ns, reply, strict=True):
                replies[n] = found

        refused_here: list[int] = []
        slots = [self.layout.keys(part.bucket).intents() for part in parts]
        slow = [*await self.on_nodes(slots, node_call, replied), *refused_here]
        calls = [("EVAL", COMMIT, len(arguments[n][0]), *arguments[n][0], *arguments[n][1])
                 for n in slow]  # fmt: skip
        for n, reply in zip(slow, await self._run(calls), strict=True):
            replies[n] = reply
        refused: dict[int, list[bytes | None]] = {}
        for part, reply in zip(parts, replies, strict=True):
            found = found_values(reply)
            if found is not None:
                refused[part.bucket] = found
        return refused

    # --- finalize ----------------------------------------------------------------

    async def finalize(self, ops: Iterable[Op]) -> None:
        """Run steps, one script per node, all nodes at once; a node that refuses its
        script (a slot moved or moving) has its steps run one `FINALIZE` per slot,
        each where its slot is: a step run twice does nothing the second time."""
        steps = list(ops)
        refused = await self.on_nodes(
            [str(op[1]) for op in steps],
            lambda ns: (
                "EVAL",
                FINALIZE_ON_NODE,
                0,
                *claims.finalize_arguments([steps[n] for n in ns])[1],
            ),
        )
        by_slot: dict[int, list[Op]] = {}
        for n in refused:
            by_slot.setdefault(int(key_slot(str(steps[n][1]).encode())), []).append(steps[n])
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
        await self.many(calls)

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

    async def settle_own(self, spread: SpreadCommit) -> None:
        """Finish or undo this worker's own commit after one of its steps failed (a
        lost connection: which buckets committed is not known), at once rather than
        when its lease ends: each bucket that owns claims is asked as a recovery would
        ask it (`DECIDE`). A bucket script still in flight finds the "aborted" mark
        and is refused. Best effort: if this fails too, the lease recovers it."""
        owning = [part for part in spread.buckets.values() if part.forward]
        try:
            keys = [self.layout.keys(p.bucket).intent(spread.commit) for p in owning]
            intents = await self._run([("EVAL", DECIDE, 1, k, ABORTED_TTL_MS) for k in keys])
            steps = [*spread.released]
            for part, intent in zip(owning, intents, strict=True):
                steps += part.back if intent is None else part.forward
            await self.finalize(steps)
            self.drop_intents(
                spread.commit, [p for p, i in zip(owning, intents, strict=True) if i is not None]
            )
        except Exception as exc:
            log.warning("commit %s left to its lease (%r)", spread.commit, exc)

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
