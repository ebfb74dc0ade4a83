from __future__ import annotations

from attributes.profile import Skip
from streams.metrics import WorkerMetrics
from streams.processor import BatchReport


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


def test_each_worker_has_its_own_registry() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.window_expiries.inc(3)
    assert first.registry.get_sample_value("traitflow_window_expiries_total") == 3
    assert second.registry.get_sample_value("traitflow_window_expiries_total") == 0
