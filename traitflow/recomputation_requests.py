"""A source delete job asks for its source's events to be taken out of the computed
attributes: a recomputation (`attributes.recomputation`), asked when its scan starts.

Asking is one change of the rules version, which is then the *horizon* of the source's
topics: every backfill leaves out what the workers computed of them before they
switched to it, and what the source sends later counts, as the job's README section
says.

When it asks nothing, and keeps the attributes as they are (the job says why): with
TRAITFLOW_BACKFILL off, or when an ingest topic no longer retains its whole history
(a partition whose first retained offset is not 0). The recomputation computes every
attribute from the retained history alone: over a topic that dropped old events it
would lose what those events counted, from every source.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs
from traitflow.rule_catalog import Catalog, Change, RuleCatalog
from traitflow.source_jobs import KEPT, RECOMPUTING, SourceJob
from traitflow.topics import ingest_partitions

log = logging.getLogger(__name__)

#: ask for a job's recomputation; what the job's attributes then become (`SourceJob.
#: attributes`: RECOMPUTING, or why they are KEPT)
AskRecomputation = Callable[[SourceJob], Awaitable[str]]


def recompute_for(job: str, topics: Sequence[str]) -> Callable[[Catalog], Change]:
    """The catalog edit that starts (or joins) a recomputation for `job`; nothing if it
    was asked already (a runner that died after asking asks again)."""

    def edit(catalog: Catalog) -> Change:
        running = catalog.recomputation
        if job in catalog.recomputed or (running is not None and job in running.jobs):
            return Change()
        return Change(recompute_for=job, topics=tuple(topics))

    return edit


def kept_because(settings: Settings, lows: Mapping[TopicPartition, int]) -> str | None:
    """Why attributes cannot be recomputed, or None if they can."""
    if not settings.backfill:
        return "TRAITFLOW_BACKFILL is off"
    dropped = sorted((tp.topic, tp.partition, low) for tp, low in lows.items() if low > 0)
    if dropped:
        topic, partition, low = dropped[0]
        return (
            f"topic {topic} partition {partition} retains offsets from {low} on: "
            "recomputing from the retained history would lose what the events before counted"
        )
    return None


def catalog_recomputation(settings: Settings, catalog: RuleCatalog) -> AskRecomputation:
    """`AskRecomputation` of the rules catalog, once the ingest topics' retention is
    known to keep their whole history."""

    async def ask(job: SourceJob) -> str:
        consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = ingest_partitions(consumer, settings)
            why = kept_because(settings, await consumer.beginning_offsets(partitions))
        finally:
            await consumer.stop()
        if why is not None:
            log.info("job %s: attributes kept as they are: %s", job.id, why)
            return f"{KEPT}: {why}"
        topics = [topic for topic, source in settings.sources.items() if source == job.source]
        await catalog.change(recompute_for(job.id, topics))
        log.info("job %s: attributes to be recomputed without the history of %s", job.id, topics)
        return RECOMPUTING

    return ask
