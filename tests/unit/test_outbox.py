"""The outbox relay: oldest first, deletes only what the broker acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Sequence

import pytest

from traitflow import outbox
from traitflow.outbox import Outgoing, entry_fields, from_entry, relay

pytestmark = pytest.mark.anyio


class ListOutbox:
    """An in-memory `Outbox`: one list of (id, message) per input partition."""

    def __init__(self, **queues: list[Outgoing]) -> None:
        self.queues = {
            source.replace("_", "/"): [(str(i).encode(), m) for i, m in enumerate(messages)]
            for source, messages in queues.items()
        }

    async def pending(self, source: str, count: int) -> list[tuple[bytes, Outgoing]]:
        return self.queues.get(source, [])[:count]

    async def remove(self, source: str, ids: Sequence[bytes]) -> None:
        gone = set(ids)
        self.queues[source] = [(i, m) for i, m in self.queues.get(source, []) if i not in gone]


def message(n: int, topic: str = "changes") -> Outgoing:
    return Outgoing(topic, f"u-{n}".encode(), f"v{n}".encode())


class Broker:
    """A producer: `send` queues a message and returns its delivery, which fails for
    the keys in `refuse` (the broker refused it)."""

    def __init__(self, refuse: Collection[bytes] = ()) -> None:
        self.refuse = set(refuse)
        self.received: list[Outgoing] = []

    async def send(self, sent: Outgoing) -> Awaitable[object]:
        self.received.append(sent)
        return self._delivered(sent)

    async def _delivered(self, sent: Outgoing) -> None:
        if sent.key in self.refuse:
            raise ConnectionError("the broker is away")


class SlowToTakeBroker(Broker):
    """A producer that takes each message only after a wait of its own (as its first
    sends to a topic wait for the topic's metadata, and resume in no set order), and
    acknowledges them in reverse."""

    def __init__(self, delays: Sequence[float]) -> None:
        super().__init__()
        self.delays = list(delays)

    async def send(self, sent: Outgoing) -> Awaitable[object]:
        await asyncio.sleep(self.delays.pop(0))
        return await super().send(sent)

    async def _delivered(self, sent: Outgoing) -> None:
        await asyncio.sleep(0.001 * (10 - len(self.received)))


def test_a_message_survives_its_stream_entry() -> None:
    for sent in (message(1), Outgoing("changes", b"u-1", None)):
        assert from_entry(entry_fields(sent)) == sent
    assert b"value" not in entry_fields(Outgoing("changes", b"u-1", None))  # a tombstone


async def test_every_partition_is_sent_in_order_and_emptied() -> None:
    box = ListOutbox(events_0=[message(1), message(2)], events_1=[message(3)])
    broker = Broker()
    assert await relay(box, ["events/0", "events/1"], broker.send) == 3
    assert broker.received == [message(1), message(2), message(3)]
    assert box.queues == {"events/0": [], "events/1": []}


async def test_only_the_owned_partitions_are_relayed() -> None:
    box = ListOutbox(events_0=[message(1)], events_1=[message(2)])
    broker = Broker()
    await relay(box, ["events/1"], broker.send)
    assert broker.received == [message(2)]
    assert len(box.queues["events/0"]) == 1


async def test_a_failed_send_keeps_it_and_what_follows_for_the_next_round() -> None:
    box = ListOutbox(events_0=[message(1), message(2), message(3)])
    broker = Broker(refuse={b"u-2"})
    with pytest.raises(ConnectionError):
        await relay(box, ["events/0"], broker.send)
    assert [m for _, m in box.queues["events/0"]] == [message(2), message(3)]
    broker.refuse = set()
    assert await relay(box, ["events/0"], broker.send) == 2
    # u-3 may have been sent twice (it was in flight with u-2): a repeat, never a loss
    assert broker.received[-2:] == [message(2), message(3)]


async def test_messages_reach_the_producer_in_order_however_long_it_takes_each() -> None:
    box = ListOutbox(events_0=[message(n) for n in range(4)])
    broker = SlowToTakeBroker(delays=[0.02, 0.0, 0.01, 0.0])
    assert await relay(box, ["events/0"], broker.send) == 4
    assert broker.received == [message(n) for n in range(4)]


async def test_a_producer_that_refuses_a_message_keeps_it_for_the_next_round() -> None:
    box = ListOutbox(events_0=[message(1), message(2), message(3)])
    broker = Broker()
    taken = broker.send

    async def full(sent: Outgoing) -> Awaitable[object]:
        if sent == message(2):
            raise BufferError("the producer's buffer is full")
        return await taken(sent)

    with pytest.raises(BufferError):
        await relay(box, ["events/0"], full)
    assert broker.received == [message(1)]
    assert [m for _, m in box.queues["events/0"]] == [message(2), message(3)]


async def test_a_full_round_reads_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RELAY_BATCH", 2)
    box = ListOutbox(events_0=[message(n) for n in range(5)])
    broker = Broker()
    assert await relay(box, ["events/0"], broker.send) == 5
    assert broker.received == [message(n) for n in range(5)]
