"""`traitflow profiles recount`: rebuild an entity's profile counts
(`traitflow.profile_counts`) from every state in Redis, for profiles stored before the
counts existed or counters that were lost.

The commits keep the counts by the categories each state was last counted in
(`ProfileState.counted`), so a recount must set that list in every state as well as
the counters, or the next write of a profile would count it again. It SCANs the
entity's states a round at a time (at most `rate_per_s` states a second, so live API
reads keep their latency), rewrites the states whose list is not the current one
(keeping their expiry: an anonymous-only profile still expires when it would have),
and replaces the counters in one MULTI/EXEC at the end. Anonymous-only profiles are
counted among the expiring ones with their keys' deadline, as their commits count
them.

The workers must be stopped meanwhile: a commit during the pass would be counted by
both, or by neither. A key SCAN returns twice is counted once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import redis.asyncio as aioredis

from attributes.profile import decode_state, encode_state
from traitflow.key_layout import KeyLayout
from traitflow.profile_counts import categories
from traitflow.store import now_ms

K = TypeVar("K", bytes, str)


@dataclass(slots=True)
class Recount:
    """What a recount found: kept profiles per category, expiring ones with their
    deadline, and the states whose category list it rewrote."""

    kept: dict[str, int] = field(default_factory=dict)
    #: category -> {profile id: when its keys expire (ms)}
    expiring: dict[str, dict[str, int]] = field(default_factory=dict)
    scanned: int = 0
    rewritten: int = 0

    def counts(self) -> dict[str, int]:
        """Category -> profiles, kept and expiring (as `ProfileStore.profile_counts`)."""
        total = dict(self.kept)
        for name, members in self.expiring.items():
            total[name] = total.get(name, 0) + len(members)
        return total


async def recount(
    client: aioredis.Redis,
    keys: KeyLayout,
    entity: str,
    *,
    rate_per_s: float = 2000.0,
    batch: int = 200,
    clock: Callable[[], int] = now_ms,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Recount:
    """Count every state of `entity` and replace its counters with the result."""
    found = Recount()
    seen: set[bytes] = set()
    cursor = 0
    while True:
        started = time.monotonic()
        cursor, names = await client.scan(
            cursor, match=f"{keys.state_prefix(entity)}*", count=batch
        )
        fresh = [name for name in cast("list[bytes]", names) if name not in seen]
        seen.update(fresh)
        if fresh:
            await _count_round(client, fresh, found, clock())
        if cursor == 0:
            break
        pause = len(fresh) / rate_per_s - (time.monotonic() - started)
        if pause > 0:
            await sleep(pause)
    await _replace(client, keys, entity, found)
    return found


async def _count_round(
    client: aioredis.Redis, names: list[bytes], found: Recount, now: int
) -> None:
    """One round's states (one MGET and their PTTLs in one pipeline), counted; those
    whose list changed written back with their expiry kept (XX: not one that expired
    meanwhile)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.mget(names)
        for name in names:
            pipe.pttl(name)
        replies = await pipe.execute()
    raws = cast("list[bytes | None]", replies[0])
    rewrites = tally(found, names, raws, replies[1:], now)
    if rewrites:
        async with client.pipeline(transaction=False) as pipe:
            for name, value in rewrites.items():
                pipe.set(name, value, keepttl=True, xx=True)
            await pipe.execute()
        found.rewritten += len(rewrites)


def tally(
    found: Recount,
    names: Sequence[K],
    raws: Sequence[bytes | None],
    ttls: Sequence[int],
    now: int,
) -> dict[K, bytes]:
    """Count the states read (`raws`, with their keys' PTTL) into `found`; the states
    whose category list must be written back, by key name."""
    rewrites: dict[K, bytes] = {}
    for name, raw, ttl in zip(names, raws, ttls, strict=True):
        if raw is None:
            continue  # expired since the SCAN
        state = decode_state(raw)
        held = categories(state)
        found.scanned += 1
        if state.counted != held:
            state.counted = held
            rewrites[name] = encode_state(state)
        if ttl > 0:
            for category in held:
                found.expiring.setdefault(category, {})[state.id] = now + ttl
        else:
            for category in held:
                found.kept[category] = found.kept.get(category, 0) + 1
    return rewrites


async def _replace(client: aioredis.Redis, keys: KeyLayout, entity: str, found: Recount) -> None:
    """The counters as `found` says, in one transaction: the old ones go first."""
    listed = cast("set[bytes]", await client.smembers(keys.expiring_categories(entity)))
    old = [keys.expiring_profiles(entity, name.decode()) for name in listed]
    async with client.pipeline(transaction=True) as transaction:
        transaction.delete(keys.profile_counts(entity), keys.expiring_categories(entity), *old)
        if found.kept:
            transaction.hset(keys.profile_counts(entity), mapping=found.kept)  # type: ignore[arg-type]
        for name, members in found.expiring.items():
            transaction.zadd(keys.expiring_profiles(entity, name), members)
        if found.expiring:
            transaction.sadd(keys.expiring_categories(entity), *found.expiring)
        await transaction.execute()
