"""Worker metrics, in Prometheus' text format: what the processor did, batch by batch.

Counters follow the batch reports, so they say what happened to every record: applied,
dead-lettered, skipped as already applied (at-least-once redelivery at work), and, per
attribute and reason, the events an attribute did not take (a string where a number is
summed, a missing field, an event outside a window, a filter that failed). Each skip
is also in the worker's log with its messageId when it is a type error. Identity
stitching adds merges, links refused by an identity limit (also logged) or by a
source's trust level (logged at a bounded rate: `streams.refusals`), and commits
that found another worker's write under them (the batch was computed again).

Stalls are visible too (README, "Operating the worker"): batches retried and why, dead
letters parked because the dead-letter topic refused them, the consumer lag per input
partition and the age of the oldest record not yet processed. Lag and age come from
`Progress`, which the batch handler keeps up to date: what is in progress and what
is done, per partition. Lag is refreshed by a worker timer; the age is computed
when scraped.

The worker serves them on `TRAITFLOW_WORKER_METRICS_PORT` when that is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from attributes.stitching import LIMIT
from streams.processor import BatchReport, Record

#: an input partition: (topic, partition)
Partition = tuple[str, int]


class Progress:
    """Where processing stands per input partition, and the batch in progress.

    The *position* of a partition is the offset of its first record not yet
    processed: the first offset of the batch in progress if it has records of that
    partition, else the end of what was processed here or committed by anyone."""

    def __init__(self) -> None:
        self.done: dict[Partition, int] = {}
        self.in_progress: dict[Partition, int] = {}
        #: the timestamp (epoch ms) of the oldest record of the batch in progress
        self.oldest_ms: int | None = None

    def started(self, records: Sequence[Record]) -> None:
        firsts: dict[Partition, int] = {}
        for record in records:
            key = (record.topic, record.partition)
            first = firsts.get(key)
            if first is None or record.offset < first:
                firsts[key] = record.offset
        self.in_progress = firsts
        self.oldest_ms = min((record.timestamp_ms for record in records), default=None)

    def finished(self, records: Sequence[Record]) -> None:
        for record in records:
            key = (record.topic, record.partition)
            self.done[key] = max(self.done.get(key, 0), record.offset + 1)
        self.in_progress = {}
        self.oldest_ms = None

    def position(self, partition: Partition, committed: int | None) -> int | None:
        first = self.in_progress.get(partition)
        if first is not None:
            return first
        known = [offset for offset in (self.done.get(partition), committed) if offset is not None]
        return max(known) if known else None

    def oldest_age_s(self, now_s: float) -> float:
        """Now minus the oldest record's timestamp in the batch in progress; 0 when
        idle (a record stamped in the future by a skewed clock counts as 0)."""
        if self.oldest_ms is None:
            return 0.0
        return max(0.0, now_s - self.oldest_ms / 1000)


def consumer_lags(
    highwaters: Mapping[Partition, int | None], positions: Mapping[Partition, int | None]
) -> dict[Partition, int]:
    """Records behind, per partition: high watermark minus position, never below 0 (a
    broker that under-reports its watermark can put it behind the position). A
    partition whose watermark or position is not known yet has no sample."""
    lags = {}
    for partition, highwater in highwaters.items():
        position = positions.get(partition)
        if highwater is not None and position is not None:
            lags[partition] = max(0, highwater - position)
    return lags


class WorkerMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.records = Counter("traitflow_records", "Records consumed.", registry=self.registry)
        self.dead_letters = Counter(
            "traitflow_dead_letters",
            "Records dead-lettered: to the dead-letter topic, or parked when it refuses them.",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "traitflow_duplicate_records",
            "Records skipped as applied before: a redelivered offset, or a messageId "
            "applied within the dedupe window (per entity that had them).",
            registry=self.registry,
        )
        self.profiles_written = Counter(
            "traitflow_profiles_written", "Profile writes by batches.", registry=self.registry
        )
        self.skips = Counter(
            "traitflow_attribute_skips",
            "Events an attribute did not take, by attribute and reason.",
            ["attribute", "kind"],
            registry=self.registry,
        )
        self.merges = Counter(
            "traitflow_profile_merges",
            "Profiles merged into another by identity stitching.",
            registry=self.registry,
        )
        self.refused_links = Counter(
            "traitflow_refused_links",
            "Identity links and merges not made because of an identity limit, by type.",
            ["identity_type"],
            registry=self.registry,
        )
        self.links_refused = Counter(
            "traitflow_identity_links_refused",
            "Identity links and merges an event asked for that its source's trust level "
            "(TRAITFLOW_SOURCE_TRUST) does not allow, by source and reason: merge (the "
            "identity belongs to another profile) or link (it is new). The event is "
            "applied without them.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.erasures = Counter(
            "traitflow_profile_erasures",
            "Erase commands applied (GDPR requests and source delete jobs): each leaves "
            "tombstones of hashed identities.",
            registry=self.registry,
        )
        self.commit_conflicts = Counter(
            "traitflow_commit_conflicts",
            "Commits that found another worker changed what they read (its readers are redone).",
            registry=self.registry,
        )
        self.offset_resets = Counter(
            "traitflow_offset_resets",
            "Input partitions found reset: their offsets started again below what was "
            "committed (a broker that lost data, a topic made again; README: offsets "
            "that go backwards). Their records are applied as a new log.",
            ["partition"],
            registry=self.registry,
        )
        self.window_expiries = Counter(
            "traitflow_window_expiries",
            "Profiles re-rendered without an event: a lookback window moved, or their rules "
            "read now (TRAITFLOW_TIME_REFRESH_S).",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "traitflow_batch_seconds",
            "Time to process and write one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.batch_retries = Counter(
            "traitflow_batch_retries",
            "Batches tried again because processing failed: reason transient (Redis "
            "unreachable, timed out) or error (anything else; logged with a traceback).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("transient", "error"):
            self.batch_retries.labels(reason)
        self.dead_letters_parked = Counter(
            "traitflow_dead_letters_parked",
            "Dead letters the dead-letter topic refused, parked in Redis instead, by the "
            "produce error's type.",
            ["error"],
            registry=self.registry,
        )
        self.parked_dead_letters = Gauge(
            "traitflow_parked_dead_letters",
            "Dead letters parked in Redis now, by every worker, waiting for "
            "`traitflow dead-letters replay --parked`.",
            registry=self.registry,
        )
        self.rules_version = Gauge(
            "traitflow_rules_version",
            "The rules version this worker computes with (attributes changed through the "
            "API increment it): workers that differ for long cannot switch (see the log).",
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "traitflow_outbox_pending",
            "Messages committed writes left in this worker's outboxes, not sent yet "
            "(audience changes, profile changes): growing while the broker refuses them.",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "traitflow_consumer_lag",
            "Records of an input partition this worker owns not processed yet: its high "
            "watermark minus the first offset not processed. The embedded broker (Tansu) "
            "under-reports high watermarks by up to one produced batch, so there it can "
            "read low.",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.progress = Progress()
        self.oldest_unprocessed_age = Gauge(
            "traitflow_oldest_unprocessed_age_seconds",
            "Now minus the timestamp of the oldest record of the batch in progress; 0 when "
            "no batch is in progress. Grows without bound while a batch is stuck.",
            registry=self.registry,
        )
        self.oldest_unprocessed_age.set_function(lambda: self.progress.oldest_age_s(clock()))
        self._lag_samples: set[Partition] = set()

    def batch_started(self, records: Sequence[Record]) -> None:
        self.progress.started(records)

    def batch_finished(self, records: Sequence[Record]) -> None:
        self.progress.finished(records)

    def batch_retried(self, transient: bool) -> None:
        self.batch_retries.labels("transient" if transient else "error").inc()

    def parked(self, errors: Sequence[str], parked_now: int) -> None:
        """Dead letters were parked (`errors`: each one's produce error type)."""
        for error in errors:
            self.dead_letters_parked.labels(error).inc()
        self.parked_dead_letters.set(parked_now)

    def set_lags(self, lags: Mapping[Partition, int]) -> None:
        """The lag of every partition owned now; the others' samples go."""
        for topic, partition in self._lag_samples - lags.keys():
            self.consumer_lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)
        self._lag_samples = set(lags)

    def observe(self, report: BatchReport, seconds: float) -> None:
        self.records.inc(report.records)
        self.dead_letters.inc(report.dead_lettered)
        self.duplicates.inc(report.duplicates)
        self.profiles_written.inc(report.profiles_written)
        for skip in report.skips:
            self.skips.labels(skip.attribute, skip.kind).inc()
        self.merges.inc(report.merges)
        for refusal in report.refusals:
            if refusal.kind == LIMIT:
                self.refused_links.labels(refusal.identity[0]).inc()
            else:
                self.links_refused.labels(refusal.source, refusal.kind).inc()
        self.commit_conflicts.inc(report.conflicts)
        self.erasures.inc(report.erasures)
        for partition in report.resets:
            self.offset_resets.labels(partition).inc()
        self.batch_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics from a background thread (the event loop stays free)."""
        start_http_server(port, addr=host, registry=self.registry)
