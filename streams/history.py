"""Where an attribute's history lies in each ingest partition: what a backfill reads
(`streams.backfill`).

A worker notes, per partition, the first offset it computed at each rules version
(`streams.rule_versions`, in `tf:rs:{partition}`). Everything below the first offset
noted at an attribute's version or a newer one was computed without the attribute:
that is its history. A batch that switched versions midway also notes the offsets
past its start that it had committed at the older version: history as well. The same
notes say what a source delete job leaves out of every backfill (`after_horizon`).
Pure: the notes are read by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

__all__ = ["OPEN", "Span", "after_horizon", "committed_before", "history_end", "text"]

#: a span's end when it is read to the end of the log (a dry run's)
OPEN = 2**63 - 1


def history_end(starts: Mapping[bytes | str, bytes | str], version: int) -> int | None:
    """Where a partition's history for an attribute of `version` ends: the first offset
    computed at that version or a newer one (`tf:rs:{partition}`); None if none was."""
    found = [
        int(offset)
        for noted, offset in starts.items()
        if text(noted).isdigit() and int(noted) >= version
    ]
    return min(found) if found else None


def committed_before(
    starts: Mapping[bytes | str, bytes | str], version: int, entity: str
) -> frozenset[int]:
    """Offsets past a partition's history end that are history all the same for an
    attribute of `entity` and `version`: a worker that switched rules midway through a
    batch had committed them at an older version, without the attribute
    (`streams.rule_versions`; noted as `"{newer}:{entity}:{older}"`)."""
    found: set[int] = set()
    for noted, offsets in starts.items():
        newer, _, rest = text(noted).partition(":")
        of, _, older = rest.rpartition(":")
        if of == entity and int(older) < version <= int(newer):
            found.update(int(o) for o in text(offsets).split(",") if o)
    return frozenset(found)


def text(value: bytes | str) -> str:
    """A Redis reply's key or value as text (a client may decode replies or not)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(slots=True)
class Span:
    """The part of one partition a backfill reads: offsets `low` to `end` (excluded),
    and the offsets of `also` past it (`committed_before`), but those of `skip`."""

    partition: TopicPartition
    low: int
    end: int
    also: frozenset[int] = frozenset()
    skip: frozenset[int] = frozenset()

    @property
    def stop(self) -> int:
        """Where reading the partition stops (excluded)."""
        return max(self.end, max(self.also, default=-1) + 1)

    def wants(self, offset: int) -> bool:
        if offset < self.low or offset in self.skip:
            return False
        return offset < self.end or offset in self.also


def after_horizon(
    span: Span, starts: Mapping[bytes | str, bytes | str], horizon: int, entity: str
) -> Span:
    """`span` without what the workers computed before rules version `horizon`: the
    partition is a source's that a delete job took out of the attributes when the
    rules were at that version (`attributes.recomputation`). That is everything below
    the first offset computed at `horizon` or later, and the offsets past it that a
    batch which switched midway had committed at an older version; all of the span if
    no batch of the partition was computed at `horizon` yet."""
    cut = history_end(starts, horizon)
    low = max(span.low, span.end if cut is None else cut)
    before = committed_before(starts, horizon, entity)
    also = frozenset(offset for offset in span.also if offset >= low)
    return Span(span.partition, low, max(low, span.end), also, span.skip | before)
