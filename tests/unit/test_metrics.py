from __future__ import annotations

from attributes.profile import Skip
from streams.metrics import Progress, WorkerMetrics, consumer_lags
from streams.processor import BatchReport, Record


def test_reports_become_counters() -> None:
    metrics = WorkerMetrics()
    report = BatchReport(records=10, profiles_written=3, dead_lettered=2, duplicates=1)
    report.skips += [
        Skip("lifetime_value", "m-1", "expected a number, got str 'free'", "wrong_type"),
        Skip("lifetime_value", "m-2", "expected a number, got str 'x'", "wrong_type"),
        Skip("orders_30d", "m-3", "event time is before the 30 days window", "outside_window"),
    ]
    metrics.observe(report, 0.02)
    metrics.observe(BatchReport(records=5), 0.01)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("traitflow_records_total") == 15
    assert value("traitflow_dead_letters_total") == 2
    assert value("traitflow_duplicate_records_total") == 1
    assert value("traitflow_profiles_written_total") == 3
    assert (
        value("traitflow_attribute_skips_total", attribute="lifetime_value", kind="wrong_type") == 2
    )
    assert (
        value("traitflow_attribute_skips_total", attribute="orders_30d", kind="outside_window") == 1
    )
    assert value("traitflow_batch_seconds_count") == 2
    assert value("traitflow_batch_seconds_bucket", le="0.01") == 1


def test_offset_resets_are_counted_per_partition() -> None:
    metrics = WorkerMetrics()
    metrics.observe(BatchReport(records=3, resets=["events/0", "events/2"]), 0.01)
    metrics.observe(BatchReport(records=3, resets=["events/0"]), 0.01)
    sample = metrics.registry.get_sample_value
    assert sample("traitflow_offset_resets_total", {"partition": "events/0"}) == 2
    assert sample("traitflow_offset_resets_total", {"partition": "events/2"}) == 1


def test_each_worker_has_its_own_registry() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.window_expiries.inc(3)
    assert first.registry.get_sample_value("traitflow_window_expiries_total") == 3
    assert second.registry.get_sample_value("traitflow_window_expiries_total") == 0


def test_batch_retries_are_counted_by_reason_and_exposed_before_any() -> None:
    metrics = WorkerMetrics()

    def retries(reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "traitflow_batch_retries_total", {"reason": reason}
        )

    assert (retries("transient"), retries("error")) == (0, 0)  # alerts see a series at once
    metrics.batch_retried(transient=True)
    metrics.batch_retried(transient=True)
    metrics.batch_retried(transient=False)
    assert (retries("transient"), retries("error")) == (2, 1)


def test_parked_dead_letters_are_counted_by_error_and_the_gauge_follows() -> None:
    metrics = WorkerMetrics()
    metrics.parked(["MessageSizeTooLargeError", "MessageSizeTooLargeError", "TimeoutError"], 5)
    value = metrics.registry.get_sample_value
    assert value("traitflow_dead_letters_parked_total", {"error": "MessageSizeTooLargeError"}) == 2
    assert value("traitflow_dead_letters_parked_total", {"error": "TimeoutError"}) == 1
    assert value("traitflow_parked_dead_letters") == 5


def record(partition: int, offset: int, timestamp_ms: int = 0) -> Record:
    return Record("events", partition, offset, b"{}", timestamp_ms)


def test_the_position_is_the_batch_in_progress_else_what_is_done_or_committed() -> None:
    progress = Progress()
    assert progress.position(("events", 0), None) is None  # nothing known yet
    assert progress.position(("events", 0), 40) == 40  # committed by anyone
    progress.started([record(0, 41), record(0, 42), record(1, 7)])
    assert progress.position(("events", 0), 40) == 41
    assert progress.position(("events", 1), None) == 7
    assert progress.position(("events", 2), 3) == 3  # not in this batch
    progress.finished([record(0, 41), record(0, 42), record(1, 7)])
    assert progress.position(("events", 0), 40) == 43
    assert progress.position(("events", 0), 50) == 50  # another worker went further


def test_the_oldest_unprocessed_age_is_that_of_the_batch_in_progress() -> None:
    now = [1_000.0]
    metrics = WorkerMetrics(clock=lambda: now[0])

    def age() -> float | None:
        return metrics.registry.get_sample_value("traitflow_oldest_unprocessed_age_seconds")

    assert age() == 0  # idle
    records = [record(0, 1, 990_500), record(1, 1, 985_000), record(0, 2, 999_000)]
    metrics.batch_started(records)
    assert age() == 15.0
    now[0] = 1_060.0  # stuck: it grows
    assert age() == 75.0
    metrics.batch_finished(records)
    assert age() == 0
    metrics.batch_started([record(0, 3, 2_000_000)])  # a producer's clock ahead of ours
    assert age() == 0


def test_lag_is_the_high_watermark_minus_the_position_never_below_zero() -> None:
    lags = consumer_lags(
        {("e", 0): 100, ("e", 1): 10, ("e", 2): None, ("e", 3): 5},
        {("e", 0): 60, ("e", 1): 12, ("e", 2): 0, ("e", 3): None},
    )
    assert lags == {("e", 0): 40, ("e", 1): 0}


def test_lag_samples_follow_the_partitions_owned() -> None:
    metrics = WorkerMetrics()

    def lag(partition: int) -> float | None:
        return metrics.registry.get_sample_value(
            "traitflow_consumer_lag", {"topic": "events", "partition": str(partition)}
        )

    metrics.set_lags({("events", 0): 12, ("events", 1): 0})
    assert (lag(0), lag(1)) == (12, 0)
    metrics.set_lags({("events", 1): 3})  # partition 0 was revoked
    assert (lag(0), lag(1)) == (None, 3)
