"""What the worker does differently on the spread layout (docs/redis-cluster.md, option
B; `TRAITFLOW_REDIS_LAYOUT=spread`): its profiles go through `SpreadProfileStore`, its
outbox relay reads every bucket's copy (`SpreadOutbox`), a partition it is given
is taken only after the commits a dead worker left committed are finished
(`SpreadProfileStore.recover`), and every bucket's copy of the rules version is raised
before it commits at a version (`traitflow.spread_rules`). Everything else it stores
(logs, rules, dead letters) stays under the prefix's one hash tag, as in option A.

What the spread layout does not support yet is refused here, at start, by name, rather
than done without its guarantee.
"""

from __future__ import annotations

import logging

from traitflow.config import Settings
from traitflow.durability import Durability, DurabilityWait
from traitflow.redis_client import RedisTarget
from traitflow.spread_durability import SpreadDurabilityWait
from traitflow.spread_outbox import SpreadOutbox
from traitflow.spread_store import SpreadProfileStore

log = logging.getLogger(__name__)


def spread_profiles(settings: Settings) -> SpreadProfileStore | None:
    """The worker's store of profiles on the spread layout; None on the others."""
    if settings.redis_layout != "spread":
        return None
    return SpreadProfileStore.from_url(
        RedisTarget.of(settings),
        settings.key_prefix,
        settings.redis_buckets,
        dedupe_window_ms=max(1, int(settings.dedupe_window_s * 1000)),
        lease_ms=max(1, int(settings.redis_claim_lease_s * 1000)),
    )


def durability(settings: Settings) -> Durability:
    """What each batch waits on before it is acked (`TRAITFLOW_REDIS_SYNC`): on the
    spread layout, every node (`traitflow.spread_durability`)."""
    sync, timeout_s = settings.redis_sync, settings.redis_sync_timeout_s
    if settings.redis_layout == "spread":
        return SpreadDurabilityWait.from_url(
            settings, settings.key_prefix, settings.redis_buckets, sync, timeout_s
        )
    return DurabilityWait.from_url(settings, settings.key_prefix, sync, timeout_s)


def spread_outbox(store: SpreadProfileStore) -> SpreadOutbox:
    """The relay's outbox, told by the store which buckets each commit wrote to."""
    return SpreadOutbox(store.client, store.layout, store.outbox_rounds)


async def raise_rules(store: SpreadProfileStore, version: int) -> None:
    """Raise every bucket's copy of the rules version to `version`, the one this process
    starts at, before its first commit (`traitflow.spread_rules`). A failure is logged:
    a commit at `version` is then refused where a copy is lower, and the switch that
    follows raises them again."""
    try:
        await store.raise_rules(version)
    except Exception as exc:
        log.warning("the buckets' rules versions were not raised to %d here: %r", version, exc)


async def partitions_assigned(store: SpreadProfileStore) -> None:
    """Partitions moved: the next timer rounds read every bucket (what other owners
    wrote is not known here: `traitflow.spread_rounds`), and the commits a dead worker
    left between their steps are finished; a failure is logged: whoever meets what is
    left recovers it too."""
    store.outbox_rounds.forget()
    store.expiry_rounds.forget()
    try:
        if finished := await store.recover():
            log.info("finished %d commits a dead worker left", finished)
    except Exception as exc:
        log.warning("the commits a dead worker left were not finished here: %r", exc)
