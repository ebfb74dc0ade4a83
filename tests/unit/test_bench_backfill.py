"""The backfill benchmark's probes: each is waited for a bounded time and one never
seen is counted, not waited for (a probe loop without a bound hung the bench)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import bench.backfill
from bench.backfill import probe, summary
from bench.freshness import Bench
from traitflow.config import Settings


class FakeWriter:
    def close(self) -> None:
        pass


class FakeProducer:
    """Takes every send at once; nothing is ever applied behind it."""

    def __init__(self, **_: Any) -> None:
        self.sent: list[bytes] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def settings() -> Settings:
    return Settings.from_environ({}).isolated("bench-bf-test")


def test_a_probe_whose_view_never_moves_is_given_up_after_its_timeout() -> None:
    bench = Bench(settings(), "127.0.0.1", 0, "", via="redis")
    bench.producer = FakeProducer()

    async def connect(user: str) -> tuple[FakeWriter, Callable[[], Awaitable[int]]]:
        async def read() -> int:
            return 7  # the version before the send, forever

        return FakeWriter(), read

    bench.connect = connect  # type: ignore[assignment,method-assign]
    started = time.perf_counter()
    assert asyncio.run(bench.probe(timeout_s=0.05)) is None
    assert time.perf_counter() - started < 2


def test_the_probe_loop_stops_when_told_and_counts_the_probes_not_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = iter([3.0, None, 5.0, None, 4.0])

    class FakeBench:
        producer: Any

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def probe(self, timeout_s: float) -> float | None:
            assert timeout_s == 0.5
            return next(outcomes)

    monkeypatch.setattr(bench.backfill, "Bench", FakeBench)
    monkeypatch.setattr(bench.backfill, "AIOKafkaProducer", FakeProducer)
    sends = iter([True] * 5 + [False])
    seen, missed = asyncio.run(probe(settings(), 0.001, 0.5, lambda: next(sends), "test"))
    assert sorted(seen) == [3.0, 4.0, 5.0]
    assert missed == 2


def test_a_probe_not_seen_counts_as_slower_than_the_timeout() -> None:
    line = summary("live alone", [float(ms) for ms in range(1, 99)], 2, 30.0)
    assert "n=100, not seen within 30 s: 2" in line
    assert "p50 50.0 ms" in line
    assert "p99 >30000 ms" in line  # 2 of 100 not seen: the p99 is beyond the timeout
    assert "p99 99.0 ms" in summary("x", [float(ms) for ms in range(1, 101)], 0, 30.0)
    assert "none sent" in summary("x", [], 0, 30.0)
