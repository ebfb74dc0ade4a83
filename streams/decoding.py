"""Decoding a batch (`BatchDecoding`, a part of `streams.processor.BatchProcessor`):
each record read once, checked, and turned into the events each entity claims.

It is apart from the batch's path because it is pure computation, with no lock and no
store, which the worker runs while the previous batch's writes are still in flight
(`streams.batches`), and because what an event must pass before any entity computes
it is decided here alone (the same checks as the HTTP ingest's: `attributes.
admission`). Whatever one record raises here makes it alone a dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from attributes.admission import Admission
from attributes.events import InvalidEvent
from streams.entity import EntityProcessor
from streams.records import Decoded, Identified, Record

#: the processor's logger: its messages keep the name they had before this module
log = logging.getLogger("streams.processor")


class BatchDecoding:
    """How `BatchProcessor` decodes a batch; its `__init__` sets these."""

    clock: Callable[[], float]
    entities: dict[str, EntityProcessor]
    admission: Admission
    dedupe: bool
    sources: dict[str, str]

    def decode(self, records: Sequence[Record]) -> Decoded:
        """Decode a batch and find each entity's events in it: pure computation, no
        lock and no store, so the worker does it while the previous batch's writes
        are still in flight (`streams.batches`). An event that is no event, over a
        limit, or claimed by no entity is rejected with the reason."""
        now = int(self.clock() * 1000)
        rejected: list[tuple[Record, str]] = []
        claims: dict[str, list[Identified]] = {entity: [] for entity in self.entities}
        for record in records:
            try:
                claimed = self.claims(record, now)
            except InvalidEvent as exc:
                rejected.append((record, str(exc)))
                continue
            except Exception as exc:  # a bug some input meets: that input's alone
                log.warning("record %s/%s@%s could not be read", *where(record), exc_info=True)
                rejected.append((record, f"event could not be read: {exc!r}"))
                continue
            for entity, item in claimed:
                claims[entity].append(item)
        return Decoded(records, claims, rejected)

    def claims(self, record: Record, now: int) -> list[tuple[str, Identified]]:
        """The record's event for each entity whose identities it carries; raises
        `InvalidEvent` with the reason when it is no event, over a limit, or claimed
        by no entity. (A backfill reads history through it too: `streams.backfill`.)"""
        if record.value is None:
            raise InvalidEvent("record has no value")
        admitted = self.admission.admit(record.value, now_ms=now, fallback_ms=record.timestamp_ms)
        event, at = admitted.event, admitted.at_ms
        message = None
        if self.dedupe and event.messageId:
            message = (self.sources.get(record.topic, record.topic), event.messageId)
        entities = self.entities  # each orders the identities it applies the event by
        return [
            (claim.entity, Identified(record, event, ids, claim.previous, message, at))
            for claim in admitted.claims
            for ids in [entities[claim.entity].anchored(claim.identities, record.topic)]
        ]


def where(record: Record) -> tuple[str, int, int]:
    """Where a record is, for a log line: topic, partition, offset."""
    return record.topic, record.partition, record.offset
