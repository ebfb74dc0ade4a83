"""`RedisLogHistory`: input partitions' checkpoints and epochs (`streams.logs`) in Redis,
under `KeyLayout.log_checkpoints` and `KeyLayout.log_epoch`.

Costs one round trip per batch (the checkpoints of its partitions, trimmed in the
same pipeline) and one per partition when a batch does not continue the worker's
previous one (after a start or a rebalance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis

from streams.logs import KEPT, Checkpoint, History, LogHistory
from traitflow.key_layout import KeyLayout


def _member(checkpoint: Checkpoint) -> str:
    return f"{checkpoint.offset}:{checkpoint.timestamp_ms}:{checkpoint.crc}"


def _checkpoint(member: bytes) -> Checkpoint:
    offset, timestamp_ms, crc = member.split(b":")
    return Checkpoint(int(offset), int(timestamp_ms), int(crc))


class RedisLogHistory(LogHistory):
    def __init__(self, client: aioredis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    async def read(self, partition: str) -> History:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.log_epoch(partition))
            pipe.zrange(self.keys.log_checkpoints(partition), 0, -1)
            epoch, members = cast("tuple[bytes | None, list[bytes]]", await pipe.execute())
        checkpoints = sorted(map(_checkpoint, members), key=lambda c: c.offset)
        return History(int(epoch or 0), checkpoints)

    async def restart(self, partition: str, first: Checkpoint) -> int:
        key = self.keys.log_checkpoints(partition)
        async with self.client.pipeline(transaction=True) as transaction:
            transaction.incr(self.keys.log_epoch(partition))
            transaction.delete(key)
            transaction.zadd(key, {_member(first): first.offset})
            epoch, _, _ = await transaction.execute()
        return int(epoch)

    async def record(self, checkpoints: Sequence[tuple[str, Checkpoint]]) -> None:
        if not checkpoints:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, checkpoint in checkpoints:
                key = self.keys.log_checkpoints(partition)
                pipe.zadd(key, {_member(checkpoint): checkpoint.offset})
                pipe.zremrangebyrank(key, 1, -(KEPT + 1))  # keep the birth and the latest
            await pipe.execute()
