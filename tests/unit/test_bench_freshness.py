"""The freshness benchmark's arithmetic: percentiles, the rates asked for and the
background load's pacing."""

from __future__ import annotations

import itertools

import pytest

from bench.freshness import chunk_sizes, paced, parse_rates, percentile


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.9) == 90
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2  # unsorted input
    assert percentile([1.0, 2.0, 3.0, 1000.0], 0.99) == 1000  # a small run's p99 is its max


@pytest.mark.parametrize("rate", [0, 33, 2000, 4999.5])
def test_the_pacing_sends_the_rate_in_whole_events_per_tick(rate: float) -> None:
    sizes = chunk_sizes(rate, tick_s=0.01, ticks=1000)  # ten seconds
    assert all(isinstance(size, int) and size >= 0 for size in sizes)
    assert abs(sum(sizes) - rate * 10) < 1  # fractions carried, not lost
    assert max(sizes) - min(sizes) <= 1  # even: no bursts


def test_the_pacing_is_endless_and_the_chunks_are_its_start() -> None:
    first = list(itertools.islice(paced(250, 0.01), 400))
    assert first == chunk_sizes(250, 0.01, 400)
    assert sum(first[:4]) == 10  # 2.5 per tick: 2, 3, 2, 3
    assert set(first) == {2, 3}


def test_rates_come_from_lists_and_single_options_in_order() -> None:
    assert parse_rates([], []) == [0, 2000, 5000]  # the default: idle, ~20%, half
    assert parse_rates(["0,4000"], []) == [0, 4000]
    assert parse_rates(["0", "100, 200"], [300.0]) == [0, 100, 200, 300]
    assert parse_rates([], [5000.0, 0.0]) == [5000, 0]
    with pytest.raises(ValueError, match="0 or more"):
        parse_rates(["-1"], [])
