"""The freshness benchmark's arithmetic: percentiles and the background load's pacing."""

from __future__ import annotations

import pytest

from bench.freshness import chunk_sizes, percentile


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2  # unsorted input


@pytest.mark.parametrize("rate", [0, 33, 2000, 4999.5])
def test_the_pacing_sends_the_rate_in_whole_events_per_tick(rate: float) -> None:
    sizes = chunk_sizes(rate, tick_s=0.01, ticks=1000)  # ten seconds
    assert all(isinstance(size, int) and size >= 0 for size in sizes)
    assert abs(sum(sizes) - rate * 10) < 1  # fractions carried, not lost
    assert max(sizes) - min(sizes) <= 1  # even: no bursts
