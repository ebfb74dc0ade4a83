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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
from faust.types import Message

from attributes.identities import IdentityRules
from attributes.ruleset import RuleSet
from streams import fastfaust, faust_fixes
from streams.backfill import Backfill
from streams.backfill_runner import BackfillRunner, run_in_worker, start_notes
from streams.dead_letters import RedisParking, TopicDeadLetters
from streams.metrics import WorkerMetrics
from streams.processor import BatchProcessor, DeadLetterSink, Decoded, Record
from streams.redis_logs import RedisLogHistory
from streams.rule_switch import RuleSwitch
from streams.spread_worker import (
    durability,
    partitions_assigned,
    raise_rules,
    spread_outbox,
    spread_profiles,
)
from streams.worker_rounds import (
    STALL_METRICS_INTERVAL_S,
    TRANSIENT,
    expire_owned,
    observe_consumer,
    relay_outboxes,
)
from traitflow.config import Settings
from traitflow.durability import Durability
from traitflow.kafka_client import faust_options
from traitflow.outbox import RedisOutbox
from traitflow.redis_store import RedisProfileStore
from traitflow.rule_catalog import RedisRuleCatalog, RuleSource
from traitflow.state_cache import CachedProfileStore
from traitflow.store import ProfileStore

log = logging.getLogger(__name__)


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
    spread = spread_profiles(settings)
    store = CachedProfileStore(spread or profiles, settings.state_cache_profiles)
    outbox = spread_outbox(spread) if spread else RedisOutbox(profiles.client, profiles.keys)
    # before a batch is acked: its writes on disk or replicas (traitflow.durability)
    durable = durability(settings)

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
                await partitions_assigned(spread)
                await raise_rules(spread, processor.rules_version)

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
        catalog = RedisRuleCatalog(profiles.client, profiles.keys)
        switch = RuleSwitch(catalog, source, spread.raise_rules if spread else None)
        processor.reload = switch.current
        processor.on_switch = forget_states
        if rules_version:
            processor.switch(rules, rules_version)
        metrics.rules_version.set(rules_version)
        processor.note_start = start_notes(profiles.client, profiles.keys)
        if not settings.backfill_process:  # else `streams.backfill_process` runs them
            backfill = Backfill(
                settings, processor, catalog, profiles.client, source, spread=spread
            )
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


async def process_until_done(
    processor: BatchProcessor,
    records: Sequence[Record],
    metrics: WorkerMetrics,
    *,
    durable: Durability | None = None,
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
