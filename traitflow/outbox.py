"""The outbox: messages a profile write must publish, stored with the write, sent after.

Some writes must be announced on a topic: a profile that entered or left an audience,
a profile that changed (for systems that mirror profiles). Sent before the commit, a
message can announce a change that a failed commit never made. Sent after it, a crash
in between loses it for good: the batch is delivered again, finds its offsets applied,
changes nothing, and so announces nothing. So a write carries its messages
(`ProfileWrite.outgoing`), the commit appends them to a Redis stream of the write's
input partition in the same atomic commit as the profile (`KeyLayout.outbox`), and the
worker that owns the partition relays them to Kafka, deleting each entry once the
broker has acknowledged it (`relay`).

A relay that dies between the broker's acknowledgement and the delete sends those
entries again when the partition's next owner relays them: a consumer may see a message
twice, never miss one, and never see one of a write that was not committed. Each
message carries its own id (for example the profile, its version and what happened)
for a consumer to drop a repeat by. Entries of one partition are sent in the order they
were committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis

from traitflow.key_layout import KeyLayout
from traitflow.store import Outgoing

__all__ = [
    "RELAY_BATCH",
    "Outbox",
    "Outgoing",
    "RedisOutbox",
    "entry_fields",
    "from_entry",
    "relay",
]

#: the entries one relay round reads of a partition's outbox (it reads again while full)
RELAY_BATCH = 500


def entry_fields(message: Outgoing) -> dict[bytes, bytes]:
    """A message as the fields of its stream entry (a tombstone has no `value` field)."""
    fields = {b"topic": message.topic.encode(), b"key": message.key}
    if message.value is not None:
        fields[b"value"] = message.value
    return fields


def from_entry(fields: dict[bytes, bytes]) -> Outgoing:
    return Outgoing(fields[b"topic"].decode(), fields[b"key"], fields.get(b"value"))


class Outbox(Protocol):
    """Where committed messages wait: one ordered queue per input partition."""

    async def pending(self, source: str, count: int) -> list[tuple[bytes, Outgoing]]:
        """The oldest `count` entries of `source`'s outbox: (entry id, message)."""

    async def remove(self, source: str, ids: Sequence[bytes]) -> None:
        """Delete entries that were sent."""


class RedisOutbox:
    """`Outbox` on the Redis streams the commit appends to (`KeyLayout.outbox`)."""

    def __init__(self, client: aioredis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    async def pending(self, source: str, count: int) -> list[tuple[bytes, Outgoing]]:
        entries = await self.client.xrange(self.keys.outbox(source), count=count)
        return [
            (entry_id, from_entry(fields))
            for entry_id, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)
        ]

    async def remove(self, source: str, ids: Sequence[bytes]) -> None:
        if ids:
            await self.client.xdel(self.keys.outbox(source), *ids)

    async def size(self, sources: Iterable[str]) -> int:
        """Messages waiting in `sources`' outboxes (one round trip): what the
        `traitflow_outbox_pending` gauge shows, growing while the broker refuses them."""
        async with self.client.pipeline(transaction=False) as pipe:
            for source in sources:
                pipe.xlen(self.keys.outbox(source))
            return sum(await pipe.execute())


#: hand one message to the producer; returns once it is queued, in the order of the
#: calls, with what completes when the broker has taken it (or raises)
Send = Callable[[Outgoing], Awaitable[Awaitable[object]]]


async def relay(outbox: Outbox, sources: Iterable[str], send: Send) -> int:
    """Send every pending message of `sources`' outboxes, oldest first, and delete what
    the broker acknowledged; return how many were sent. A failed send stops that
    partition's round where it failed (what was acknowledged before it is deleted), so
    order holds and nothing unsent is deleted; the next round starts again there.

    Messages are handed to the producer one after the other and only their
    acknowledgements are awaited together: handed over concurrently, the first sends
    to a topic whose metadata the producer has yet to fetch all wait for it and resume
    in no set order, and a profile's older view could land after its newer one on
    the compacted topic."""
    sent = 0
    for source in list(sources):  # a live set: a revoke may shrink it meanwhile
        while True:
            entries = await outbox.pending(source, RELAY_BATCH)
            if not entries:
                break
            deliveries, refused = await _hand_over([message for _, message in entries], send)
            results = await asyncio.gather(*deliveries, return_exceptions=True)
            done = []
            for (entry_id, _), result in zip(entries, results, strict=False):
                if isinstance(result, BaseException):
                    break
                done.append(entry_id)
            await outbox.remove(source, done)
            sent += len(done)
            if len(done) < len(results):
                failed = results[len(done)]
                assert isinstance(failed, BaseException)
                raise failed
            if refused is not None:
                raise refused
            if len(entries) < RELAY_BATCH:
                break
    return sent


async def _hand_over(
    messages: Sequence[Outgoing], send: Send
) -> tuple[list[Awaitable[object]], Exception | None]:
    """Each message to the producer in order, until one is refused: the deliveries of
    those it took, and the refusal (None: it took them all)."""
    deliveries = []
    for message in messages:
        try:
            deliveries.append(await send(message))
        except Exception as exc:
            return deliveries, exc
    return deliveries, None
