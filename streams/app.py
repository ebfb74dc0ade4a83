"""The Faust app: ingest topics in, the batch processor in the middle, Redis out.

Kept deliberately thin. The ingest topics are *batch topics*
(`streams.fastfaust.batch_subscribe`, `streams.batches`): the consumer hands each
fetch round's records to one handler, which turns them into
transport-neutral `Record`s for `BatchProcessor`; they are acked once it returns, i.e.
after their effect is in Redis. Faust's per-event Stream machinery (agents, events,
channel queues) is skipped: it cost a third of the worker's CPU. Faust still runs the
worker, the consumer group, offset commits and the dead-letter producer (whose
letters are parked in Redis when the topic refuses them: `streams.dead_letters`).
State lives in Redis, not in Faust tables: windowed tables never expire restored
keys, and Tansu does not compact changelogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
import redis.exceptions
from aiokafka.errors import KafkaError
from faust.types import Message

from attributes.identities import IdentityRules
from attributes.ruleset import RuleSet
from streams import fastfaust, faust_fixes
from streams.backfill import Backfill
from streams.backfill_runner import BackfillRunner, run_in_worker, start_notes
from streams.dead_letters import RedisParking, TopicDeadLetters
from streams.metrics import WorkerMetrics, consumer_lags
from streams.processor import BatchProcessor, DeadLetterSink, Decoded, Record
from streams.redis_logs import RedisLogHistory
from streams.rule_switch import RuleSwitch
from streams.spread_worker import recover, spread_outbox, spread_profiles
from traitflow.config import Settings
from traitflow.durability import DurabilityWait, NotDurable
from traitflow.kafka_client import faust_options
from traitflow.outbox import RedisOutbox, relay
from traitflow.redis_store import RedisProfileStore
from traitflow.rule_catalog import RedisRuleCatalog, RuleSource
from traitflow.spread_outbox import SpreadOutbox
from traitflow.state_cache import CachedProfileStore
from traitflow.store import Outgoing, ProfileStore
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


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(",") if server)


def create_app(
    settings: Settings,
    rules: RuleSet,
    metrics: WorkerMetrics | None = None,
    *,
    source: RuleSource | None = None,
    rules_version: int = 0,
) -> faust.App:
    """The worker's app computing `rules`. With `source`, the rule file they were
    composed from, the worker follows the attributes made through the API: `rules` are
    at `rules_version`, and it switches when that moves (`streams.rule_switch`)."""
    faust_fixes.install()
    fastfaust.install()
    metrics = metrics or WorkerMetrics()
    session, rebalance, heartbeat = settings.group_timeouts
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.kafka_bootstrap),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_rebalance_timeout=rebalance,
        broker_heartbeat_interval=heartbeat,
        web_enabled=False,
        datadir=str(settings.home / "faust"),
        # the one topic Faust creates itself, its assignor's leader topic (no records);
        # unset: Faust's 1 (it takes no -1 for the broker's default)
        topic_replication_factor=settings.topic_replication_factor or 1,
        **faust_options(settings),  # TLS and SASL, for its consumer and producer
    )
    faust_fixes.set_fetch_wait(app, settings.fetch_wait)
    ingest = app.topic(*settings.sources, key_type=bytes, value_type=bytes)

    async def produce_dead_letter(value: bytes, headers: Mapping[str, bytes]) -> Awaitable[Any]:
        producer = await app.maybe_start_producer()
        delivery: Awaitable[Any] = await producer.send(
            settings.dead_letter_topic, None, value, None, None, headers
        )
        return delivery

    parking = RedisParking.from_url(settings, settings.key_prefix)
    dead_letters = TopicDeadLetters(
        settings.dead_letter_topic,
        produce_dead_letter,
        parking,
        attempts=settings.dead_letter_attempts,
        timeout_s=settings.dead_letter_timeout_s,
        on_parked=metrics.parked,
    )

    profiles = redis_profiles(settings)  # on the spread layout: what is not a profile's
    spread = spread_profiles(settings, rules_version)
    store = CachedProfileStore(spread or profiles, settings.state_cache_profiles)
    # before a batch is acked: its writes on disk or replicas (traitflow.durability)
    durable = DurabilityWait.from_url(
        settings, settings.key_prefix, settings.redis_sync, settings.redis_sync_timeout_s
    )

    processor = worker_processor(settings, rules, profiles, store=store, dead_letters=dead_letters)
    #: the input partitions ("topic/partition") this worker owns: whose windows it expires
    owned: set[str] = set()
    ingest_topics = set(settings.sources)

    def forget_states() -> None:
        """Drop every cached state, and the renders made from them."""
        store.clear()
        processor.forget_renders()

    # Faust signals a revoke only after in-flight batches are acked, so no batch is
    # half-applied here; the lock waits for an expiry round in progress. After any move
    # of partitions another worker may have written our old profiles, so every cached
    # state is suspect, and so is where each partition's batches were.
    async def on_revoked(sender: Any, revoked: set[Any], *, signal: Any, **kwargs: Any) -> None:
        async with processor.lock:
            owned.difference_update(f"{tp.topic}/{tp.partition}" for tp in revoked)
            forget_states()
            processor.forget_positions()

    async def on_assigned(sender: Any, assigned: set[Any], *, signal: Any, **kwargs: Any) -> None:
        async with processor.lock:
            owned.update(
                f"{tp.topic}/{tp.partition}" for tp in assigned if tp.topic in ingest_topics
            )
            forget_states()
            processor.forget_positions()
            if spread is not None:
                await recover(spread)

    # A rules change follows every backfill (its attribute made ACTIVE): the states the
    # backfill joined are stale here if another process joined them. Kept, each would
    # cost a conflict at its next commit and its events computed again (a batch split
    # so across the switch is still counted once: `RuleVersions._also`).

    async def close_store(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await store.close()  # sent after the consumer stopped and the last batch was acked
        if spread is not None:
            await profiles.close()
        await parking.close()
        await durable.close()

    # mode types handlers with NamedArg("BaseSignalT", ...), a string mypy cannot match
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(close_store)  # type: ignore[arg-type]

    if source is not None:
        switch = RuleSwitch(RedisRuleCatalog(profiles.client, profiles.keys), source)
        processor.reload = switch.current
        processor.on_switch = forget_states
        if rules_version:
            processor.switch(rules, rules_version)
        metrics.rules_version.set(rules_version)
        processor.note_start = start_notes(profiles.client, profiles.keys)
        if not settings.backfill_process:  # else `streams.backfill_process` runs them
            backfill = Backfill(settings, processor, switch.catalog, profiles.client, source)
            run_in_worker(app, BackfillRunner(backfill))

        @app.timer(interval=settings.rules_poll_s)  # type: ignore[untyped-decorator]
        async def switch_rules() -> None:
            try:
                await switch.poll(processor, metrics)
            except Exception as exc:
                transient = isinstance(exc, TRANSIENT)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "cannot switch to the current rules (%s); commits wait for it",
                    exc,
                )

    # attributes made through the API may bring windows to rules that had none
    if source is not None or any(e.rules.changes_on_time for e in processor.entities.values()):

        @app.timer(interval=settings.expiry_interval_s)  # type: ignore[untyped-decorator]
        async def expire_windows() -> None:
            await expire_owned(processor, owned, metrics)

    outbox = spread_outbox(spread) if spread else RedisOutbox(profiles.client, profiles.keys)
    relay_outboxes(
        app,
        settings,
        outbox=outbox,
        owned=owned,
        metrics=metrics,
        audiences=bool(rules.audiences),
    )

    @app.timer(interval=STALL_METRICS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def observe_stalls() -> None:
        await observe_consumer(app.consumer, ingest_topics, metrics, parking)

    def decode(messages: Sequence[Message]) -> Decoded:
        records = [
            Record(m.topic, m.partition, m.offset, m.value, int(m.timestamp * 1000))
            for m in messages
        ]
        return processor.decode(records)

    async def process(decoded: Decoded) -> None:
        await process_until_done(
            processor, decoded.records, metrics, durable=durable, decoded=decoded
        )

    fastfaust.batch_subscribe(app, ingest, process, max_size=settings.batch_size, prepare=decode)
    return app


def redis_profiles(settings: Settings) -> RedisProfileStore:
    """The worker's Redis profile store for `settings`."""
    return RedisProfileStore.from_url(
        settings,
        settings.key_prefix,
        dedupe_window_ms=max(1, int(settings.dedupe_window_s * 1000)),
    )


def worker_processor(
    settings: Settings,
    rules: RuleSet,
    profiles: RedisProfileStore,
    *,
    store: ProfileStore,
    dead_letters: DeadLetterSink,
    clock: Callable[[], float] = time.time,
) -> BatchProcessor:
    """The worker's batch processor for `settings`, writing through `store` (over
    `profiles`): the one place settings meet the processor, so that a benchmark
    (`bench.memory`) runs what the worker runs."""
    return BatchProcessor(
        rules,
        store,
        dead_letters,
        clock=clock,
        remembered_renders=settings.state_cache_profiles,
        identities={entity: IdentityRules(spec) for entity, spec in settings.entities.items()},
        sources=settings.sources,
        policy=settings.default_policy,
        retractions=settings.source_deletes,
        trust=settings.trust,
        limits=settings.event_limits,
        dedupe=settings.dedupe_window_s > 0,
        logs=RedisLogHistory(profiles.client, profiles.keys),
        anonymous_ttl_ms=max(1, int(settings.anonymous_ttl_s * 1000))
        if settings.anonymous_ttl_s
        else None,
        anonymous_types=settings.anonymous_types,
        audience_topic=settings.audience_changes_topic,
        profile_topic=settings.profile_changes_topic,
        records=settings.record_mappings,
        time_refresh_ms=max(1, int(settings.time_refresh_s * 1000)),
    )


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


async def process_until_done(
    processor: BatchProcessor,
    records: Sequence[Record],
    metrics: WorkerMetrics,
    *,
    durable: DurabilityWait | None = None,
    decoded: Decoded | None = None,
) -> None:
    """Process a batch (`decoded`: already decoded), retrying until it is written;
    never raise.

    A batch handler must not raise (`streams.batches` would stop the worker: acking
    would commit records never applied). Retrying is safe: a retried batch is
    idempotent (offset watermarks). `durable` waits, once the batch is written, until
    its writes are as durable as configured; a failed wait fails the batch like a
    failed write (a Redis that restarted meanwhile may have lost them: only the batch
    puts them back). A batch that keeps failing stalls its partitions
    visibly (logs; metrics: retries, lag, the oldest unprocessed record's age) instead
    of losing data; it also holds up a rebalance, which waits for the batch in progress.
    """
    delay = 0.1
    metrics.batch_started(records)
    while True:
        started = time.perf_counter()
        try:
            report = await processor.process(records, decoded)
            if durable is not None and durable.waits:  # TRAITFLOW_REDIS_SYNC
                await durable.wait()
        except Exception as exc:
            transient = isinstance(exc, TRANSIENT)
            metrics.batch_retried(transient)
            log.log(
                logging.WARNING if transient else logging.ERROR,
                "batch of %d records not written (%r); retrying in %.1fs",
                len(records),
                exc,
                delay,
                exc_info=not transient,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        metrics.observe(report, time.perf_counter() - started)
        metrics.batch_finished(records)
        log.debug(
            "batch: %d records, %d profiles written, %d dead-lettered, %d duplicates",
            report.records,
            report.profiles_written,
            report.dead_lettered,
            report.duplicates,
        )
        if report.duplicates:
            # at-least-once at work: a restart, a crash or a retried batch re-read them
            log.info("%d records were applied before; skipped", report.duplicates)
        return
