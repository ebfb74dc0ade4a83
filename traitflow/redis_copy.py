"""Copy a deployment's keys from one Redis to another, renaming the key prefix: how a
deployment on a single Redis (keys `tf:...`) moves to a Redis Cluster, where its keys
are `{tf}:...` (the prefix as a hash tag: `traitflow.redis_cluster`). `traitflow redis
copy-keys` (`traitflow.cli_redis`) runs it.

Why DUMP/RESTORE: a key is copied whole whatever its type (strings, hashes, sets,
sorted sets, streams), with its TTL, in Redis's own serialization, and no value is
read or rewritten by traitflow. Renaming only the prefix is enough: values hold ids
and names, never a key's full name (the scripts build keys from the prefix).

Why it may be run again: SCAN walks the source in batches (no KEYS, no long block of a
serving Redis), and RESTORE ... REPLACE overwrites what an earlier, interrupted run
copied. Keys written meanwhile are what it cannot see consistently, so it measures the
source's writes (INFO's `rdb_changes_since_last_save`, which SCAN, DUMP and PTTL do not
move) before and during the copy: the workers and the API must be stopped first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: keys per SCAN and per round trip of DUMPs, then of RESTOREs
BATCH = 500


class Client(Protocol):
    """What the copy uses of a blocking redis-py client."""

    def scan(self, cursor: int = ..., match: Any = ..., count: Any = ...) -> Any: ...
    def pipeline(self, transaction: bool = ...) -> Any: ...
    def info(self, section: Any = ...) -> Any: ...


@dataclass(frozen=True)
class CopyResult:
    #: keys restored in the target
    copied: int
    #: keys SCAN returned that were gone (expired, deleted) before their DUMP
    vanished: int
    #: writes the source took while the copy ran (0 when nothing else wrote to it)
    source_writes: int


def writes(client: Client) -> int:
    """The source server's write counter: any write moves it, reads do not."""
    return int(client.info("persistence")["rdb_changes_since_last_save"])


def writes_during(
    client: Client, seconds: float, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Writes the server took in `seconds`: a worker or API still running shows here."""
    before = writes(client)
    sleep(seconds)
    return writes(client) - before


def renamed(key: bytes, old_prefix: str, new_prefix: str) -> bytes:
    """`old_prefix:rest` as `new_prefix:rest`."""
    head = old_prefix.encode() + b":"
    if not key.startswith(head):
        raise ValueError(f"key {key[:80]!r} is not under {old_prefix!r}")
    return new_prefix.encode() + b":" + key[len(head) :]


def count_keys(client: Client, prefix: str, batch: int = BATCH) -> int:
    """Keys under `prefix:` (a SCAN of the whole keyspace: on a cluster, the client is
    on the node serving the tag's slot, where all of them are)."""
    total, cursor = 0, 0
    while True:
        cursor, keys = client.scan(cursor, match=f"{prefix}:*", count=batch)
        total += len(keys)
        if int(cursor) == 0:
            return total


def copy_keys(
    source: Client,
    target: Client,
    old_prefix: str,
    new_prefix: str,
    *,
    batch: int = BATCH,
    progress: Callable[[int], None] = lambda copied: None,
) -> CopyResult:
    """Every key under `old_prefix:` in `source` into `target` under `new_prefix:`,
    with its TTL, replacing what is there; `progress` is told the keys copied so far
    after each batch."""
    before = writes(source)
    copied = vanished = 0
    cursor = 0
    while True:
        cursor, keys = source.scan(cursor, match=f"{old_prefix}:*", count=batch)
        if keys:
            reads = source.pipeline(transaction=False)
            for key in keys:
                reads.dump(key)
                reads.pttl(key)
            replies = reads.execute()
            restores = target.pipeline(transaction=False)
            restored = 0
            for key, payload, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
                if payload is None or ttl == -2:  # gone since SCAN returned it
                    vanished += 1
                    continue
                # PTTL -1: no expiry (RESTORE's 0); otherwise the milliseconds left
                keep = 0 if ttl < 0 else ttl
                restores.restore(renamed(key, old_prefix, new_prefix), keep, payload, replace=True)
                restored += 1
            if restored:
                restores.execute()
            copied += restored
            progress(copied)
        if int(cursor) == 0:
            break
    return CopyResult(copied, vanished, writes(source) - before)
