"""Knowing which log an offset belongs to: offsets that go backwards are detected.

A profile's applied offsets (`attributes.profile`) are only meaningful for the log they
were read from. When a topic is deleted and made again, or the embedded broker (memory
storage) restarts, its partitions start again at offset 0: every new record then falls
under offsets already applied, and would be taken for a redelivery, silently.

So traitflow remembers, per input partition, a few *checkpoints*: the offset, broker
timestamp and CRC of the first record of each batch it committed (the first ever,
the log's "birth", and the latest `KEPT` ones), and an *epoch*, 0 until a reset is
seen. A worker compares the first record of a batch with them whenever that batch
does not simply continue its own previous one (after a start, a rebalance or a seek):

- it starts below the birth checkpoint, or at a checkpointed offset with another
  record there: the log was reset. The partition gets a new epoch, its offsets are
  recorded under a new name (`Record.log`), so old applied offsets cannot swallow new
  records, and the reset is logged at ERROR and counted;
- it starts at a checkpointed offset with the same record: a redelivery, as usual;
- anywhere else: nothing says otherwise, so the same log (a consumer group's offsets
  deleted while the log was kept restart at the log's start, rarely a checkpoint).

A consumer group whose offsets are gone reads from the log's start (traitflow's
`auto_offset_reset` is earliest): the records of a reset log start at 0, where the
birth checkpoint almost always is.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from streams.records import Record

#: latest checkpoints kept per partition, besides the birth one
KEPT = 100


@dataclass(frozen=True, slots=True)
class Checkpoint:
    offset: int
    timestamp_ms: int
    crc: int

    @classmethod
    def of(cls, record: Record) -> Checkpoint:
        return cls(record.offset, record.timestamp_ms, zlib.crc32(record.value or b""))


@dataclass(slots=True)
class History:
    """What was committed of one input partition (its checkpoints, ascending)."""

    epoch: int = 0
    checkpoints: list[Checkpoint] = field(default_factory=list)


Verdict = Literal["new", "same", "reset"]


def judge(history: History, first: Checkpoint) -> tuple[Verdict, str]:
    """Whether a batch starting with `first` reads the log `history` describes: "new"
    (never seen), "same", or "reset"; with the reason, for the log."""
    if not history.checkpoints:
        return "new", "no record of this partition was committed before"
    birth = history.checkpoints[0]
    if first.offset < birth.offset:
        return "reset", (
            f"the log starts at offset {first.offset}, below the first one committed "
            f"({birth.offset})"
        )
    for checkpoint in history.checkpoints:
        if checkpoint.offset == first.offset:
            if checkpoint == first:
                return "same", f"offset {first.offset} holds the record committed before"
            return "reset", (
                f"offset {first.offset} holds another record than the one committed before "
                f"(timestamp {first.timestamp_ms} against {checkpoint.timestamp_ms})"
            )
    return "same", f"offset {first.offset} is not a checkpoint: taken as the same log"


class LogHistory(ABC):
    """Where partitions' histories are kept (by "topic/partition")."""

    @abstractmethod
    async def read(self, partition: str) -> History: ...

    @abstractmethod
    async def restart(self, partition: str, first: Checkpoint) -> int:
        """Start a new epoch of `partition` at `first`; return the epoch."""

    @abstractmethod
    async def record(self, checkpoints: Sequence[tuple[str, Checkpoint]]) -> None:
        """Keep the first record of each committed batch's partitions (birth + `KEPT`)."""


class MemoryLogHistory(LogHistory):
    def __init__(self) -> None:
        self.histories: dict[str, History] = {}

    async def read(self, partition: str) -> History:
        history = self.histories.get(partition, History())
        return History(history.epoch, list(history.checkpoints))

    async def restart(self, partition: str, first: Checkpoint) -> int:
        epoch = self.histories.get(partition, History()).epoch + 1
        self.histories[partition] = History(epoch, [first])
        return epoch

    async def record(self, checkpoints: Sequence[tuple[str, Checkpoint]]) -> None:
        for partition, checkpoint in checkpoints:
            history = self.histories.setdefault(partition, History())
            kept = {c.offset: c for c in history.checkpoints} | {checkpoint.offset: checkpoint}
            ordered = sorted(kept.values(), key=lambda c: c.offset)
            history.checkpoints = [ordered[0], *ordered[1:][-KEPT:]]
