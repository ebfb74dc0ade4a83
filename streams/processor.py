"""One batch of input records -> profile writes and dead letters.

This is the whole per-batch hot path, and it knows nothing about Faust: records come
in as `Record`s, profiles go out through a `ProfileStore`, and bad records through a
`DeadLetterSink`. The Faust agent is a thin adapter around it, and tests drive it
directly with the in-memory store.

Per batch: decode every record once and extract each entity's identities from it (a
record that is not an event, or carries no identity of any entity, is a dead letter);
then each entity's events go through its `EntityProcessor` (`streams.entity`): stitch,
merge and apply, then one atomic, conditional commit. Dead letters are durable before
the first commit that moves a watermark past them, and the batch is reported done
only once every entity's effect is committed, so the caller acks (commits) offsets
after the effect is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Mapping, Sequence

from attributes.events import InvalidEvent, decode_event
from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.policies import DEFAULT_POLICY, MergePolicy
from attributes.profile import Retraction
from attributes.rules import RuleSet
from streams.entity import EntityProcessor, encode_view
from streams.records import (
    BatchReport,
    DeadLetterSink,
    Identified,
    ListDeadLetters,
    Record,
)
from traitflow.store import ProfileStore

__all__ = [
    "ENTITY",
    "BatchProcessor",
    "BatchReport",
    "DeadLetterSink",
    "ListDeadLetters",
    "Record",
    "encode_view",
]

log = logging.getLogger(__name__)

#: the entity built when no other is declared
ENTITY = "user"


class BatchProcessor:
    """Applies batches of records, and re-renders profiles whose windows moved.

    `identities`: the `user` entity's identity rules, or every entity's (entity ->
    rules, in the order they are processed); each entity is computed with its own
    rules (`RuleSet.of`). `clock` gives the processing time (epoch seconds) that
    windows are evaluated at; it is read once per batch. Both entry points hold
    `lock`, so a timer's expiry round and a batch never work on the same profiles at
    once."""

    def __init__(
        self,
        rules: RuleSet,
        store: ProfileStore,
        dead_letters: DeadLetterSink,
        clock: Callable[[], float] = time.time,
        remembered_renders: int = 100_000,
        identities: IdentityRules | Mapping[str, IdentityRules] | None = None,
        sources: Mapping[str, str] | None = None,
        policy: MergePolicy = DEFAULT_POLICY,
        retractions: Mapping[str, Retraction] | None = None,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.clock = clock
        if not isinstance(identities, Mapping):
            identities = {ENTITY: identities or IdentityRules(DEFAULT_USER)}
        sources, retractions = dict(sources or {}), dict(retractions or {})  # shared
        self.entities = {
            entity: EntityProcessor(
                entity,
                rules.of(entity),
                identity_rules,
                store,
                sources,
                policy,
                retractions,
                remembered_renders,
            )
            for entity, identity_rules in identities.items()
        }
        self.lock = asyncio.Lock()
        types = {e: ", ".join(p.identities.types) for e, p in self.entities.items()}
        if len(types) == 1:
            ((entity, listed),) = types.items()
            self._unclaimed = f"event carries no {entity} identity ({listed})"
        else:
            listed = "; ".join(f"{entity}: {listed}" for entity, listed in types.items())
            self._unclaimed = f"event carries no identity of any entity ({listed})"

    def forget_renders(self) -> None:
        """Drop the remembered renders (their states are gone from the store's cache)."""
        for entity in self.entities.values():
            entity.forget_renders()

    def _read_clock(self) -> int:
        now = int(self.clock() * 1000)
        for entity in self.entities.values():
            entity.now = now
        return now

    async def process(self, records: Sequence[Record]) -> BatchReport:
        async with self.lock:
            return await self._process(records)

    async def _process(self, records: Sequence[Record]) -> BatchReport:
        """Decode, then have each entity compute and commit its events. An event that
        one entity cannot apply is a dead letter, and the entities after it skip it."""
        self._read_clock()
        report = BatchReport(records=len(records))
        rejected: list[tuple[Record, str]] = []
        claims: dict[str, list[Identified]] = {entity: [] for entity in self.entities}
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent("record has no value")
                event = decode_event(record.value)
            except InvalidEvent as exc:
                rejected.append((record, str(exc)))
                continue
            claimed = False
            for entity, processor in self.entities.items():
                rules = processor.identities
                identities = rules.extract(event)
                if identities:
                    claims[entity].append(
                        Identified(record, event, identities, rules.previous(event))
                    )
                    claimed = True
            if not claimed:
                rejected.append((record, self._unclaimed))

        sent: set[int] = set()  # ids of the rejected records already dead-lettered
        undecoded = len(rejected)
        for entity, events in claims.items():
            if len(rejected) > undecoded:  # an earlier entity could not apply some
                broken = {id(record) for record, _ in rejected}
                events = [item for item in events if id(item.record) not in broken]
            if events:
                await self._entity_batch(self.entities[entity], events, rejected, sent, report)
        await self._send(rejected, sent)
        report.dead_lettered = len(rejected)
        for refusal in report.refusals:
            log.info("profile %s: %s %r: %s", refusal.profile, *refusal.identity, refusal.reason)
        for skip in report.skips:
            if skip.kind == "wrong_type":  # the others are routine: counted, not logged
                log.info(
                    "attribute %s skipped event %s: %s",
                    skip.attribute,
                    skip.message_id,
                    skip.reason,
                )
        return report

    async def _send(self, rejected: list[tuple[Record, str]], sent: set[int]) -> None:
        """Dead-letter the rejected records not sent yet; return once they are durable."""
        letters = [(record, why) for record, why in rejected if id(record) not in sent]
        if letters:
            await self.dead_letters.send(letters)
            sent.update(id(record) for record, _ in letters)

    async def _entity_batch(
        self,
        processor: EntityProcessor,
        events: list[Identified],
        rejected: list[tuple[Record, str]],
        sent: set[int],
        report: BatchReport,
    ) -> None:
        """Compute and commit one entity's events until every one's effect is
        committed (another worker may have written some of its profiles or identities
        meanwhile: the events that read them are then computed again on top)."""
        while events:
            failed: list[tuple[Record, str]] = []
            stitched = await processor.stitch(events, failed)
            if failed:
                # the events that broke are dead letters with no effect on this entity,
                # not even on identities: its events are stitched again without them
                processor.abandon(stitched.profiles)
                known = {id(record) for record, _ in rejected}
                rejected += [(record, why) for record, why in failed if id(record) not in known]
                broken = {id(record) for record, _ in failed}
                events = [item for item in events if id(item.record) not in broken]
                continue
            try:
                await self._send(rejected, sent)  # durable before watermarks move past them
                events = await processor.commit(stitched, report)
            except BaseException:
                processor.abandon(stitched.profiles)
                raise

    async def expire(self, source: str, limit: int, owned: Container[str] | None = None) -> int:
        """Re-render the profiles indexed under `source` whose windows have moved by
        now (up to `limit` per entity); return how many were written. The cost is that
        of the due profiles only.

        With `owned`, the worker's live set of owned partitions, nothing is done unless
        `source` is still in it once the lock is held: a partition revoked while the
        expiry round waited has a new owner, the profiles' only writer."""
        async with self.lock:
            if owned is not None and source not in owned:
                return 0
            self._read_clock()
            written = 0
            for processor in self.entities.values():
                if processor.rules.windowed:
                    written += await processor.expire(source, limit)
            return written
