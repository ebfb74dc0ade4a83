"""`traitflow.redis_store` without a server: commands are packed as redis-py packs them."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from traitflow.redis_packing import HiredisPackedConnection

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "tf:s:user:u-1", b"\x00\xffstate"),
    ("MSET", "a", "b", "ümlaut-key", "valeur ✓"),
    ("ZADD", "tf:x:user:events/0", 1_700_000_000_000, "u-1", 2.5, "u-2"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"traitflow"),
    ("MGET", *(f"tf:i:user:email:{n}@x.io" for n in range(100))),
    ("SET", "big", b"x" * 100_000),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packs_what_redis_py_packs(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisPackedConnection().pack_command(*command))
    theirs = b"".join(Connection().pack_command(*command))
    assert ours == theirs
