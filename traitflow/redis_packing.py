"""`HiredisPackedConnection`: redis-py's asyncio connection with hiredis packing, in a
module of its own so that the profile store (`traitflow.redis_store`) and the Redis
Cluster clients (`traitflow.redis_cluster`, which the shared connection code
`traitflow.redis_client` builds) both use it without importing each other."""

from __future__ import annotations

import hiredis
from redis.asyncio.connection import Connection
from redis.typing import EncodableT


class HiredisPackedConnection(Connection):
    """redis-py's asyncio connection with its commands packed by hiredis, in C.

    redis-py packs every argument in Python, and a worker's commit and lookups have
    tens of thousands of arguments per batch: packing them was a large share of the
    worker's CPU (bench/README.md, "Design figures"). The arguments here are what
    redis-py's encoder takes too: str, bytes, int and float."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        first = args[0]
        # "CONFIG GET": the words of a command name go as separate arguments
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])
        # hiredis's stub types `args` as a 1-tuple; it takes any number
        return [hiredis.pack_command(args)]  # type: ignore[arg-type]
