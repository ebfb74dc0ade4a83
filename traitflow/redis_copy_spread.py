"""Copy a single Redis deployment's keys onto the spread layout of a Redis Cluster
(docs/redis-cluster.md, option B): `traitflow redis copy-keys` with
`TRAITFLOW_REDIS_LAYOUT=spread`.

Renaming the prefix is not enough there: a key's hash tag says what it holds (a
profile's keys its bucket's, an identity's pointer its value's, a dedupe set's
messageIds each their own bucket's: `traitflow.spread_layout`). So each key is placed
by what it names (`placement`):

- a key of one thing (a profile's state, view, version and records, a pointer, a
  tombstone, an erase request's status) moves whole (DUMP/RESTORE, with its TTL) to
  the name the spread layout gives it;
- a key of many (an expiry index, a set of applied messageIds, the expiring members of
  an audience or counted category) is split: each member goes to its own bucket's
  copy, with the key's TTL; the sets that list which audiences and categories have
  expiring members are made again from where the members went;
- a per-bucket copy of which one exists (audience sizes and profile counts: summed over
  the buckets when read; an outbox stream: relayed from every bucket) moves whole to
  bucket 0's copy;
- everything else (API keys, rules, logs, jobs, the rules version) is under the shared
  tag `{tf}`, as on option A. The workers raise every bucket's copy of the rules version
  to the shared one when they start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from traitflow.redis_copy import BATCH, Client, CopyResult, writes
from traitflow.spread_layout import SpreadLayout


@dataclass(frozen=True)
class Move:
    """The key, whole, under this name."""

    key: str


@dataclass(frozen=True)
class Split:
    """Each member of the set or sorted set to the key `target(member)`; and, in each
    bucket that took some, `marker` (a set's key, its member) when given."""

    target: Callable[[str], str]
    marker: Callable[[str], tuple[str, str]] | None = None


@dataclass(frozen=True)
class Derived:
    """Not copied: made again from the keys it indexes (a `Split`'s markers)."""


Placement = Move | Split | Derived


def placement(rest: str, layout: SpreadLayout) -> Placement:
    """Where the key `{old prefix}:{rest}` goes on `layout`."""
    keys, kind, _, tail = layout.keys(0), *rest.partition(":")
    entity, _, named = tail.partition(":")
    if kind in ("s", "v", "n"):
        made = {"s": keys.state, "v": keys.view, "n": keys.version}[kind]
        return Move(made(entity, named))
    if kind == "c":
        collection, _, pid = named.partition(":")
        return Move(keys.record(entity, collection, pid))
    if kind == "i":
        index, _, value = named.partition(":")
        return Move(keys.index(entity, index, value))
    if kind == "t":
        return Move(keys.tombstone(entity, named))
    if kind == "er":
        return Move(keys.erasure(tail))
    if kind == "o":
        return Move(keys.outbox(tail))
    if kind == "a":
        return Move(keys.audience_sizes(entity))
    if kind == "pc":
        return Move(keys.profile_counts(entity))
    if kind == "x":
        return Split(lambda pid: layout.of_profile(entity, pid).expiries(entity, named))
    if kind == "d":
        source, _, number = named.rpartition(":")

        def applied(mid: str) -> str:
            bucket = layout.message_bucket(source, mid)
            return layout.keys(bucket).messages(entity, source, int(number))

        return Split(applied)
    if kind in ("ax", "pcx") and not named:
        return Derived()
    if kind == "ax":
        return Split(
            lambda pid: layout.of_profile(entity, pid).expiring_members(entity, named),
            lambda pid: (layout.of_profile(entity, pid).expiring_audiences(entity), named),
        )
    if kind == "pcx":
        return Split(
            lambda pid: layout.of_profile(entity, pid).expiring_profiles(entity, named),
            lambda pid: (layout.of_profile(entity, pid).expiring_categories(entity), named),
        )
    return Move(f"{layout.shared.prefix}:{rest}")


@dataclass
class _Batch:
    """What one SCAN batch writes to the target."""

    restores: list[tuple[str, int, bytes]] = field(default_factory=list)
    #: target key -> (its type, its members: score or None, the TTL in ms or 0)
    members: dict[str, tuple[str, dict[str, float | None], int]] = field(default_factory=dict)
    markers: set[tuple[str, str]] = field(default_factory=set)


def copy_to_spread(
    source: Client,
    target: Any,
    old_prefix: str,
    layout: SpreadLayout,
    *,
    batch: int = BATCH,
    progress: Callable[[int], None] = lambda copied: None,
) -> CopyResult:
    """Every key under `old_prefix:` in `source` placed on `layout` in `target` (a
    cluster client), with its TTL, replacing what is there (a split key's members are
    added: a second run adds the same ones); `progress` is told the source keys copied
    so far after each batch."""
    before = writes(source)
    copied = vanished = 0
    cursor = 0
    head = old_prefix.encode() + b":"
    while True:
        cursor, found = source.scan(cursor, match=f"{old_prefix}:*", count=batch)
        placed = [
            (key, where)
            for key in found
            if not isinstance(where := placement(key[len(head) :].decode(), layout), Derived)
        ]
        if placed:
            kinds = source.pipeline(transaction=False)
            for key, _ in placed:
                kinds.type(key)
                kinds.pttl(key)
            described = kinds.execute()
            reads = source.pipeline(transaction=False)
            for (key, where), kind in zip(placed, described[::2], strict=True):
                if isinstance(where, Move):
                    reads.dump(key)
                elif _text(kind) == "zset":
                    reads.zrange(key, 0, -1, withscores=True)
                else:
                    reads.smembers(key)
            batch_writes = _Batch()
            for (_, where), kind, ttl, value in zip(
                placed, described[::2], described[1::2], reads.execute(), strict=True
            ):
                if ttl == -2 or value is None or _text(kind) == "none":  # gone since SCAN
                    vanished += 1
                    continue
                keep = 0 if ttl < 0 else int(ttl)  # PTTL -1: no expiry (RESTORE's 0)
                if isinstance(where, Move):
                    batch_writes.restores.append((where.key, keep, value))
                else:
                    _split(batch_writes, where, value, keep)
                copied += 1
            _write(target, batch_writes)
            progress(copied)
        if int(cursor) == 0:
            break
    return CopyResult(copied, vanished, writes(source) - before)


def _split(into: _Batch, where: Split, read: Any, ttl: int) -> None:
    """The members of a sorted set (`read`: (member, score) pairs) or a set, each to
    its target key."""
    members: list[tuple[str, float | None]]
    if isinstance(read, list):
        members, kind = [(_text(m), float(s)) for m, s in read], "zset"
    else:
        members, kind = [(_text(m), None) for m in read], "set"
    for member, score in members:
        name = where.target(member)
        into.members.setdefault(name, (kind, {}, ttl))[1][member] = score
        if where.marker is not None:
            into.markers.add(where.marker(member))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _write(target: Any, batch: _Batch) -> None:
    pipe = target.pipeline(transaction=False)
    for key, ttl, payload in batch.restores:
        pipe.restore(key, ttl, payload, replace=True)
    for key, (kind, members, ttl) in batch.members.items():
        if kind == "zset":
            pipe.zadd(key, {m: s for m, s in members.items() if s is not None})
        else:
            pipe.sadd(key, *members)
        if ttl:
            pipe.pexpire(key, ttl)
    for key, member in batch.markers:
        pipe.sadd(key, member)
    if batch.restores or batch.members or batch.markers:
        pipe.execute()


def count_profiles(client: Any, pattern: str, batch: int = BATCH) -> int:
    """Keys matching `pattern` (of every node, on a cluster client)."""
    return sum(1 for _ in client.scan_iter(match=pattern, count=batch))
