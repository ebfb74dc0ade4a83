"""What a batch is made of and what it reports: transport-neutral records in, dead
letters and a `BatchReport` out (`streams.processor` does the work)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from attributes.events import Event
from attributes.profile import Skip
from attributes.stitching import Identity, Refusal
from traitflow.store import MessageKey


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, transport-neutral."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int
    #: how many times its partition was found reset before it (`streams.logs`)
    epoch: int = 0
    #: its input partition, "topic/partition": whose owner expires its profiles
    source: str = field(init=False, compare=False)
    #: the log its offset belongs to: its input partition, and the epoch once the
    #: partition was reset (offsets of two logs must never be compared)
    log: str = field(init=False, compare=False)

    def __post_init__(self) -> None:  # read per event, several times: made once
        source = f"{self.topic}/{self.partition}"
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "log", f"{source}@{self.epoch}" if self.epoch else source)


class DeadLetterSink(ABC):
    """Where records that cannot be processed go, with the reason; nothing is dropped."""

    @abstractmethod
    async def send(self, records: Sequence[tuple[Record, str]]) -> None:
        """Deliver every (record, reason); return only once they are durable."""


class ListDeadLetters(DeadLetterSink):
    """Keeps dead letters in memory (tests and the in-process processor)."""

    def __init__(self) -> None:
        self.records: list[tuple[Record, str]] = []

    async def send(self, records: Sequence[tuple[Record, str]]) -> None:
        self.records.extend(records)


@dataclass(frozen=True, slots=True)
class Identified:
    """A decoded event and the identities it carries (priority order, except that the
    one an untrusted source's event is applied to comes first: `attributes.stitching.
    anchored`; for an alias, `previous` is its previousId as each type it may be), and
    its (source, messageId) when it has one and duplicates are looked for by messageId."""

    record: Record
    event: Event
    ids: list[Identity]
    previous: list[Identity]
    message: MessageKey | None
    #: its event time, epoch ms (`attributes.events.event_time_ms`)
    at: int


@dataclass(frozen=True, slots=True)
class Decoded:
    """A batch decoded (`BatchProcessor.decode`): each entity's events, in record
    order, and the records that are no event of any entity, with the reason."""

    records: Sequence[Record]
    claims: dict[str, list[Identified]]
    rejected: list[tuple[Record, str]]


@dataclass(slots=True)
class BatchReport:
    records: int = 0
    profiles_written: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    skips: list[Skip] = field(default_factory=list)
    #: links and merges not made: identity limits, sources' trust levels
    refusals: list[Refusal] = field(default_factory=list)
    #: profiles merged into another
    merges: int = 0
    #: times the batch was computed again because its commit found a change under it
    conflicts: int = 0
    #: input partitions found reset: their offsets start again below what was committed
    resets: list[str] = field(default_factory=list)
    #: profiles erased (`streams.erasures`)
    erasures: int = 0

    def mark(self) -> tuple[int, int, int, int]:
        return self.duplicates, len(self.skips), len(self.refusals), self.merges

    def rollback(self, mark: tuple[int, int, int, int]) -> None:
        """Forget the per-event findings since `mark`: that attempt failed and is redone."""
        self.duplicates, skips, refusals, self.merges = mark
        del self.skips[skips:]
        del self.refusals[refusals:]
