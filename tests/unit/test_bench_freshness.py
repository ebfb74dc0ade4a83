"""The freshness benchmark's arithmetic: percentiles, the rates asked for, the
background load's pacing and what a probe asks Redis."""

from __future__ import annotations

import itertools

import orjson
import pytest

from bench.freshness import (
    chunk_sizes,
    paced,
    parse_rates,
    percentile,
    redis_probe_commands,
    resp_command,
    unique_messages,
)
from bench.pipeline import make_events
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout


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


def test_the_background_stream_never_repeats_a_messageid() -> None:
    """The worker skips a messageId it has seen as a producer's retry: a stream that
    cycled, or reused a history's ids, would be deduplicated instead of applied."""
    events, _ = make_events(200, 20, seed=5)
    history, _ = make_events(300, 20, seed=11)  # ids m0..m299, as a benchmark's history
    sent = list(itertools.islice(unique_messages(events, "run1"), 500))  # 2.5 passes
    ids = [orjson.loads(value)["messageId"] for _, value in sent]
    assert len(set(ids)) == 500
    assert not set(ids) & {orjson.loads(value)["messageId"] for _, value in history}
    for (key, value), (original_key, original) in zip(sent, itertools.cycle(events), strict=False):
        event, before = orjson.loads(value), orjson.loads(original)
        assert key == original_key
        assert event | {"messageId": None} == before | {"messageId": None}  # only the id differs
    other_run = itertools.islice(unique_messages(events, "run2"), 200)
    assert not set(ids) & {orjson.loads(value)["messageId"] for _, value in other_run}


@pytest.mark.parametrize(
    ("url", "username", "login"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", None, b"default"),
        ("redis://ops:s3cret@h:1/3", None, b"ops"),
    ],
)
def test_a_redis_probe_logs_in_and_reads_the_probed_users_view(
    url: str, username: str | None, login: bytes
) -> None:
    # the login's name once overwrote the probed user's: every probe read user "default"
    settings = Settings(redis_url=url, redis_username=username)
    *setup, get = redis_probe_commands(settings, "probe-7")
    assert setup[0] == resp_command(b"AUTH", login, b"s3cret")
    assert get == resp_command(
        b"GET", KeyLayout(settings.key_prefix).view("user", "probe-7").encode()
    )
    assert (resp_command(b"SELECT", b"3") in setup) == url.endswith("/3")


def test_a_redis_probe_without_a_password_only_reads() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0")
    assert redis_probe_commands(settings, "probe-0") == [
        resp_command(b"GET", KeyLayout(settings.key_prefix).view("user", "probe-0").encode())
    ]
