"""Worker metrics, in Prometheus' text format: what the processor did, batch by batch.

Counters follow the batch reports, so they say what happened to every record: applied,
dead-lettered, skipped as already applied (at-least-once redelivery at work), and, per
attribute and reason, the events an attribute did not take (a string where a number is
summed, a missing field, an event outside a window, a filter that failed). Each skip
is also in the worker's log with its messageId when it is a type error. Identity
stitching adds merges, links refused by an identity limit (also logged), and commits
that found another worker's write under them (the batch was computed again).

The worker serves them on `TRAITFLOW_WORKER_METRICS_PORT` when that is set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from streams.processor import BatchReport


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.records = Counter("traitflow_records", "Records consumed.", registry=self.registry)
        self.dead_letters = Counter(
            "traitflow_dead_letters",
            "Records sent to the dead-letter topic.",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "traitflow_duplicate_records",
            "Records skipped because their offsets were applied before (per entity that had them).",
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
        self.commit_conflicts = Counter(
            "traitflow_commit_conflicts",
            "Commits that found another worker changed what they read (its readers are redone).",
            registry=self.registry,
        )
        self.window_expiries = Counter(
            "traitflow_window_expiries",
            "Profiles re-rendered because a lookback window moved, without an event.",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "traitflow_batch_seconds",
            "Time to process and write one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def observe(self, report: BatchReport, seconds: float) -> None:
        self.records.inc(report.records)
        self.dead_letters.inc(report.dead_lettered)
        self.duplicates.inc(report.duplicates)
        self.profiles_written.inc(report.profiles_written)
        for skip in report.skips:
            self.skips.labels(skip.attribute, skip.kind).inc()
        self.merges.inc(report.merges)
        for refusal in report.refusals:
            self.refused_links.labels(refusal.identity[0]).inc()
        self.commit_conflicts.inc(report.conflicts)
        self.batch_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics from a background thread (the event loop stays free)."""
        start_http_server(port, addr=host, registry=self.registry)
