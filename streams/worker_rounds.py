"""What the worker does on timers, beside its batches (`streams.app` schedules them):
relay the outboxes of its partitions to the announcement topics, re-render the
profiles whose windows moved, and refresh the metrics that show a stall (consumer lag,
parked dead letters, outbox backlog). Each round that fails is logged and simply made
again at the next tick: none of them acks or deletes anything it has not finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import faust
import redis.exceptions
from aiokafka.errors import KafkaError

from streams.dead_letters import RedisParking
from streams.metrics import WorkerMetrics, consumer_lags
from streams.processor import BatchProcessor
from traitflow.config import Settings
from traitflow.durability import NotDurable
from traitflow.outbox import RedisOutbox, relay
from traitflow.spread_outbox import SpreadOutbox
from traitflow.store import Outgoing
from traitflow.topics import ensure_topics

log = logging.getLogger(__name__)

#: Errors that mean "Redis is not reachable right now": retry the batch, never ack it.
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, NotDurable)

#: Profiles re-rendered per expiry write.
EXPIRY_ROUND = 1000

#: Seconds between refreshes of the consumer lag and parked dead letters metrics, and
#: how long each of their reads may take (a scrape every 15 s sees fresh enough values).
STALL_METRICS_INTERVAL_S = 5.0
STALL_METRICS_TIMEOUT_S = 2.0


def relay_outboxes(
    app: faust.App,
    settings: Settings,
    *,
    outbox: RedisOutbox | SpreadOutbox,
    owned: set[str],
    metrics: WorkerMetrics,
    audiences: bool,
) -> None:
    """Send what committed writes left in the outboxes of the owned partitions
    (`traitflow.outbox`), every `outbox_interval_s`, to the announcement topics. The
    topics this worker announces to (audience changes when the rules declare
    `audiences`, profile changes when configured) are created at start. The relay runs
    either way: entries a worker with other rules left are still sent. A failed round is
    logged and tried again at the next tick: nothing is deleted before the broker
    acknowledged it."""
    profile_topic = settings.profile_changes_topic
    compacted = [profile_topic] if profile_topic else []
    topics = [settings.audience_changes_topic] if audiences else []
    if topics or compacted:

        @app.task  # type: ignore[untyped-decorator]
        async def create_announcement_topics() -> None:
            await ensure_topics(settings, [*topics, *compacted], compacted=compacted)

    async def send(message: Outgoing) -> Awaitable[object]:
        producer = await app.maybe_start_producer()
        delivery: Awaitable[object] = await producer.send(
            message.topic, message.key, message.value, None, None, None
        )
        return delivery

    @app.timer(interval=settings.outbox_interval_s)  # type: ignore[untyped-decorator]
    async def relay_outbox() -> None:
        try:
            await relay(outbox, owned, send)
        except Exception as exc:
            transient = isinstance(exc, (*TRANSIENT, KafkaError))
            log.log(
                logging.WARNING if transient else logging.ERROR,
                "outbox not relayed (%r); trying again at the next tick",
                exc,
                exc_info=not transient,
            )

    @app.timer(interval=STALL_METRICS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def observe_outbox() -> None:
        try:
            async with asyncio.timeout(STALL_METRICS_TIMEOUT_S):
                metrics.outbox_pending.set(await outbox.size(list(owned)))
        except (redis.exceptions.RedisError, TimeoutError) as exc:
            log.debug("outbox not counted: %r", exc)


async def expire_owned(processor: BatchProcessor, owned: set[str], metrics: WorkerMetrics) -> None:
    """One expiry round: re-render the due profiles of each owned partition. A failure
    is logged and the round is simply tried again at the next tick. `owned` is the live
    set: a partition revoked during the round is skipped from then on."""
    for source in sorted(owned):
        try:
            written = EXPIRY_ROUND
            while written == EXPIRY_ROUND:  # a full round: more may be due
                written = await processor.expire(source, EXPIRY_ROUND, owned)
                metrics.window_expiries.inc(written)
        except Exception as exc:
            transient = isinstance(exc, TRANSIENT)
            log.log(
                logging.WARNING if transient else logging.ERROR,
                "expiring windows of %s failed (%r); trying again at the next tick",
                source,
                exc,
                exc_info=not transient,
            )


async def observe_consumer(
    consumer: Any, ingest_topics: set[str], metrics: WorkerMetrics, parking: RedisParking
) -> None:
    """Refresh the lag of the owned input partitions and the count of parked letters.

    The high watermark is the larger of the one the last fetch brought and the one the
    broker lists now: the fetched one stands still while a batch is stuck (nothing is
    fetched), and Tansu lists a partition's end as its last batch's first offset + 1."""
    try:
        owned = [tp for tp in consumer.assignment() if tp.topic in ingest_topics]
        async with asyncio.timeout(STALL_METRICS_TIMEOUT_S):
            listed = await consumer.highwaters(*owned) if owned else {}
    except Exception as exc:  # a rebalance in progress, the broker away: next tick
        log.debug("consumer lag not read: %r", exc)
        return
    highwaters: dict[tuple[str, int], int | None] = {}
    positions: dict[tuple[str, int], int | None] = {}
    for tp in owned:
        partition = (tp.topic, tp.partition)
        known = [listed.get(tp)]
        with contextlib.suppress(Exception):  # not fetched from yet
            known.append(consumer.highwater(tp))
        highwaters[partition] = max((o for o in known if o is not None), default=None)
        positions[partition] = metrics.progress.position(
            partition, consumer._committed_offset.get(tp)
        )
    metrics.set_lags(consumer_lags(highwaters, positions))
    try:
        async with asyncio.timeout(STALL_METRICS_TIMEOUT_S):
            metrics.parked_dead_letters.set(await parking.count())
    except (redis.exceptions.RedisError, TimeoutError) as exc:
        log.debug("parked dead letters not counted: %r", exc)
