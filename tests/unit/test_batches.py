"""The batch router: the next batch is prepared while the one before it is handled,
handled only after it, and never after one that failed; at most two are handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.batches import BatchRouter, Subscription

pytestmark = pytest.mark.anyio


@dataclass(eq=False)
class FakeMessage:
    offset: int
    tp: str = "t/0"
    generation_id: int = 1
    tracked: bool = False


@dataclass
class FakeFlag:
    value: bool = False

    def is_set(self) -> bool:
        return self.value

    def is_active(self) -> bool:
        return not self.value


@dataclass
class FakeApp:
    consumer_generation_id: int = 1
    flow_control: FakeFlag = field(default_factory=FakeFlag)
    crashed: list[BaseException] = field(default_factory=list)

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


@dataclass
class FakeConsumer:
    app: FakeApp = field(default_factory=FakeApp)
    should_stop: bool = False
    suspend_flow: FakeFlag = field(default_factory=FakeFlag)
    _unacked_messages: set[FakeMessage] = field(default_factory=set)
    acked: list[int] = field(default_factory=list)

    def assignment(self) -> set[str]:
        return {"t/0"}

    def ack(self, message: FakeMessage) -> None:
        self._unacked_messages.discard(message)
        self.acked.append(message.offset)


class Recorder:
    """A prepare and a handler that log what happens; each handling waits for `release`."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.events: list[str] = []
        self.release: dict[int, asyncio.Event] = {}
        self.fail_on = fail_on

    def prepare(self, messages: Sequence[Any]) -> list[int]:
        offsets = [m.offset for m in messages]
        self.events.append(f"prepare {offsets[0]}")
        return offsets

    async def handle(self, offsets: list[int]) -> None:
        first = offsets[0]
        self.events.append(f"handle {first}")
        await self.release.setdefault(first, asyncio.Event()).wait()
        if first == self.fail_on:
            raise RuntimeError("a bug")
        self.events.append(f"done {first}")


def router_with(recorder: Recorder) -> tuple[BatchRouter, FakeConsumer, Subscription]:
    consumer = FakeConsumer()
    router = BatchRouter.__new__(BatchRouter)
    router.consumer, router.app, router.in_flight = consumer, consumer.app, None
    subscription = Subscription(recorder.prepare, recorder.handle, max_size=10)
    router.subscriptions = {"t": subscription}
    return router, consumer, subscription


async def hand_over(router: BatchRouter, subscription: Subscription, offset: int) -> None:
    subscription.pending = [FakeMessage(offset)]  # type: ignore[list-item]
    await router.flush(subscription)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_the_next_batch_is_prepared_while_the_previous_is_handled_then_handled_after_it() -> (
    None
):
    recorder = Recorder()
    router, consumer, subscription = router_with(recorder)

    await hand_over(router, subscription, 1)  # returns at once: the fetch loop reads on
    second = asyncio.ensure_future(hand_over(router, subscription, 2))
    await settle()
    assert recorder.events == ["prepare 1", "handle 1", "prepare 2"]
    assert not second.done()  # the fetch loop waits for the older batch before reading on

    recorder.release.setdefault(1, asyncio.Event()).set()
    await second
    await settle()
    assert recorder.events[3:] == ["done 1", "handle 2"]
    assert consumer.acked == [1]  # the second is not acked before it is handled

    recorder.release.setdefault(2, asyncio.Event()).set()
    await router.wait_in_flight()
    assert recorder.events[-1] == "done 2"
    assert consumer.acked == [1, 2]
    assert not consumer._unacked_messages


async def test_a_batch_after_one_whose_handler_raised_is_neither_handled_nor_acked() -> None:
    recorder = Recorder(fail_on=1)
    router, consumer, subscription = router_with(recorder)

    await hand_over(router, subscription, 1)
    second = asyncio.ensure_future(hand_over(router, subscription, 2))
    await settle()
    recorder.release.setdefault(1, asyncio.Event()).set()
    await second
    await router.wait_in_flight()

    assert "handle 2" not in recorder.events
    assert consumer.acked == []
    assert [str(e) for e in consumer.app.crashed] == ["a bug"]  # the worker stops


async def test_a_batch_handed_over_while_flow_is_suspended_is_left_for_a_re_read() -> None:
    recorder = Recorder()
    router, consumer, subscription = router_with(recorder)
    consumer.suspend_flow.value = True  # a rebalance

    await hand_over(router, subscription, 1)
    await settle()

    assert recorder.events == []
    assert not consumer._unacked_messages  # untracked: Faust seeks back and reads it again


async def test_records_of_a_fetch_round_wait_for_the_batch_in_flight_then_go_at_once() -> None:
    recorder = Recorder()
    router, consumer, subscription = router_with(recorder)
    await hand_over(router, subscription, 1)
    await settle()

    subscription.pending = [FakeMessage(2), FakeMessage(3)]  # type: ignore[list-item]
    await router.flush_all()  # returns at once: the fetch loop reads on meanwhile
    subscription.pending.append(FakeMessage(4))  # type: ignore[arg-type]
    await router.flush_all()
    await settle()
    assert recorder.events == ["prepare 1", "handle 1"]  # not handed over while busy

    recorder.release.setdefault(1, asyncio.Event()).set()
    await settle()
    assert recorder.events[2:] == ["done 1", "prepare 2", "handle 2"]  # one batch: 2, 3, 4
    recorder.release.setdefault(2, asyncio.Event()).set()
    await router.wait_in_flight()
    assert consumer.acked == [1, 2, 3, 4]
    assert subscription.pending == []
