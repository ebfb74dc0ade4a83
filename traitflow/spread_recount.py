"""`traitflow profiles recount` on the spread layout (docs/redis-cluster.md, option B):
what `traitflow.profile_recount` does, bucket by bucket.

A profile is counted in its own bucket's counters (the commit that writes it is that
bucket's script), and the API sums every bucket's. So each bucket's states are read
(listed as `traitflow.spread_scan` lists them), counted, their category lists written
back where they changed, and that bucket's counters replaced by what its own states
say, in one script on its slot, before the next bucket. The workers must be stopped,
as on option A.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from traitflow.profile_recount import Recount, tally
from traitflow.spread_scan import STATES, SpreadWalk
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import now_ms

#: KEYS counts hash, categories set, then the expiring zsets of ARGV's categories;
#: ARGV: kept pairs' count n, n (category, count), then per expiring category its
#: member count m and m (deadline, profile id). The old counters go first: the old
#: zsets are named from the set (`KeyLayout.expiring_profiles`: "{set}:{category}",
#: the bucket's slot).
_REPLACE = """
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', KEYS[2] .. ':' .. name)
end
redis.call('DEL', KEYS[1], KEYS[2])
local at, kept = 2, tonumber(ARGV[1])
for _ = 1, kept do
  redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 1])
  at = at + 2
end
local zset = 3
while at <= #ARGV do
  local name, members = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  for _ = 1, members do
    redis.call('ZADD', KEYS[zset], ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  redis.call('SADD', KEYS[2], name)
  zset = zset + 1
end
return 'ok'
"""


async def recount_spread(
    profiles: SpreadProfileStore,
    entity: str,
    *,
    rate_per_s: float = 2000.0,
    batch: int = 200,
    clock: Callable[[], int] = now_ms,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Recount:
    """Count every state of `entity`, bucket by bucket, and replace each bucket's
    counters; what was found over all of them."""
    layout, calls = profiles.layout, profiles.protocol
    walk = SpreadWalk(calls, layout)
    total = Recount()
    for bucket in range(layout.buckets):
        keys = layout.keys(bucket)
        ids = await walk.ids(entity, STATES, bucket)
        found = Recount()
        for start in range(0, len(ids), batch):
            began = time.monotonic()
            names = [keys.state(entity, pid) for pid in ids[start : start + batch]]
            raws = await calls.get(names)
            ttls = [int(t) for t in await calls.many([("PTTL", name) for name in names])]
            rewrites = tally(found, names, raws, ttls, clock())
            if rewrites:
                await calls.many(
                    [("SET", name, value, "KEEPTTL", "XX") for name, value in rewrites.items()]
                )
                found.rewritten += len(rewrites)
            pause = len(names) / rate_per_s - (time.monotonic() - began)
            if pause > 0:
                await sleep(pause)
        await _replace(profiles, bucket, entity, found)
        _add(total, found)
    return total


async def _replace(profiles: SpreadProfileStore, bucket: int, entity: str, found: Recount) -> None:
    """The bucket's counters as `found` says, in one script on its slot."""
    keys = profiles.layout.keys(bucket)
    counts, listed = keys.profile_counts(entity), keys.expiring_categories(entity)
    args: list[str | int] = [len(found.kept)]
    for name, count in found.kept.items():
        args += [name, count]
    zsets = []
    for name, members in found.expiring.items():
        zsets.append(keys.expiring_profiles(entity, name))
        args += [name, len(members)]
        for pid, deadline in members.items():
            args += [deadline, pid]
    await profiles._run([("EVAL", _REPLACE, 2 + len(zsets), counts, listed, *zsets, *args)])


def _add(total: Recount, found: Recount) -> None:
    total.scanned += found.scanned
    total.rewritten += found.rewritten
    for name, count in found.kept.items():
        total.kept[name] = total.kept.get(name, 0) + count
    for name, members in found.expiring.items():
        total.expiring.setdefault(name, {}).update(members)
