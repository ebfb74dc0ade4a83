"""The rules version on the spread layout (docs/redis-cluster.md, "Status of option B"):
each bucket's copy of it (`{tf.bN}:ca:v`), and how a process raises every copy before it
commits anything at a new version.

Why copies: a commit checks the rules version it computed with in the same script as
its writes (`traitflow.commit_plan`: the check that keeps a worker that has not
switched yet from writing over a backfilled attribute, and that makes a backfill
exact). On the spread layout a bucket's script runs in the bucket's slot, so each
bucket has its copy, and a bucket's commit checks its own (equality, as option A
checks `tf:ca:v`). The catalog under `{tf}` stays the one source of truth.

Why raised by the committing process, not by the catalog's change: a process that
switches to version v (`streams.rule_switch.RuleSwitch.current`, a worker's start, a
backfill before it reads history, a render pass) first raises every bucket's copy to
at least v, and only then commits at v. Copies only go up. So every commit made at an
older version landed where the copy still held that version, before the raise reached
that bucket, so before any commit at v anywhere: the order option A's one key gives
(every commit at v-1 before every commit at v), kept across buckets. A copy lower than
the version a commit computed with refuses it as a higher one does (`RulesChanged`);
the worker then switches to the current rules, which raises the copies again: a copy
lost by a failover heals the same way. The API does not raise them after a change: the
workers see the change at their next poll (`TRAITFLOW_RULES_POLL_S`) or at the first
commit refused by a bucket another process raised, as they would without it.

Except that a process that changes the catalog raises the copies right after
(`CopiesRaiser`, on the catalog `RedisRuleCatalog.from_url` makes from spread
settings: the API, a source job's request for a recomputation, `traitflow rules`):
without it, commits at the older version would go on landing until the workers' next
poll, and a source delete job's horizon (`attributes.recomputation`) would take an
event its source sent after the job began for one computed before it, and leave it out
of the recomputation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from traitflow.redis_client import Redis
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_nodes import ClusterCalls, cluster_client, keys_here

log = logging.getLogger(__name__)

#: Raise one bucket's copy to at least ARGV[1]; the copy as it was (nil: 0).
RAISE = """local have = redis.call('GET', KEYS[1])
if (tonumber(have) or 0) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return have
"""

#: `RAISE` for every bucket copy a node serves (Redis 7's `allow-cross-slot-keys`):
#: ARGV, the version then the copies' keys. Every key is touched first: if one is not on
#: this node (its slot moved or moving) the script returns {'moved'} having written
#: nothing, and those copies are raised one by one where their slot is.
RAISE_ON_NODE = (
    "#!lua flags=allow-cross-slot-keys\n"
    + keys_here(2)
    + """local version = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local have = redis.call('GET', ARGV[i])
  if (tonumber(have) or 0) < version then redis.call('SET', ARGV[i], ARGV[1]) end
  out[#out + 1] = have or false
end
return out
"""
)


def raise_calls(layout: SpreadLayout, version: int) -> list[tuple[Any, ...]]:
    """The command raising each bucket's copy to at least `version`, bucket by bucket
    (`RAISE`: the key is the fourth part, as `ClusterCalls.by_node` sends it)."""
    return [
        ("EVAL", RAISE, 1, layout.keys(bucket).rules_version(), str(version))
        for bucket in range(layout.buckets)
    ]


def copies_found(replies: Sequence[Any]) -> list[int]:
    """Each bucket's copy as a raise found it (absent: 0)."""
    return [int(reply) if reply else 0 for reply in replies]


async def raise_copies(calls: ClusterCalls, layout: SpreadLayout, version: int) -> list[int]:
    """Raise every bucket's copy of the rules version to at least `version` (one script
    per node, nodes in parallel; the copies of a node that refused it one by one, which
    follow MOVED and wait out a migration): each copy as it was. Raises if a node does
    not answer: the caller must not commit at `version` then. Idempotent."""
    if version <= 0:  # version 0 is no copy at all: nothing to raise
        return [0] * layout.buckets
    replies = await calls.by_node(
        raise_calls(layout, version),
        RAISE_ON_NODE,
        lambda call: [call[3]],
        lambda call: str(call[3]),
        head=[str(version)],
    )
    return copies_found(replies)


class CopiesRaiser:
    """Raises every bucket's copy after a change of the catalog made by this process
    (see the module's docstring). A node that does not answer is logged: its buckets
    take no commit meanwhile, at any version, and the workers raise them at their next
    switch."""

    def __init__(self, client: RedisCluster, layout: SpreadLayout) -> None:
        self.client = client
        self.calls = ClusterCalls(client)
        self.layout = layout

    @classmethod
    def of(cls, url: Redis, prefix: str, buckets: int) -> CopiesRaiser:
        return cls(cluster_client(url), SpreadLayout.of(prefix, buckets))

    async def changed(self, version: int) -> None:
        try:
            await raise_copies(self.calls, self.layout, version)
        except Exception as exc:
            log.warning(
                "the buckets' rules versions were not raised to %d after the change "
                "(the workers raise them at their next switch): %r",
                version,
                exc,
            )

    async def close(self) -> None:
        await self.client.aclose()
