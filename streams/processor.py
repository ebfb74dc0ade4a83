"""One batch of input records -> profile writes and dead letters.

This is the whole per-batch hot path, and it knows nothing about Faust: records come
in as `Record`s, profiles go out through a `ProfileStore`, and bad records through a
`DeadLetterSink`. The Faust agent is a thin adapter around it, and tests drive it
directly with the in-memory store.

Per batch: decode every record once and extract each entity's identities from it (a
record that is not an event, is over a limit (`attributes.limits`), or carries no
identity of any entity, is a dead letter); then each entity's events go through its
`EntityProcessor` (`streams.entity`): stitch, merge and apply, then one atomic,
conditional commit. Dead letters are durable before the first commit of the batch,
and the batch is reported done only once every entity's effect is committed, so the
caller acks (commits) offsets after the effect is durable. How a batch is decoded is
`streams.decoding`'s, and which rules version it is computed at `streams.
rule_versions`' (both parts of `BatchProcessor`).

No single record can stop the others: whatever one raises while it is decoded or
computed makes it a dead letter, with the exception as the reason, and the rest of
the batch goes on (`_entity_batch` narrows a failure down by halves). Only the store
failing (Redis unreachable, say) fails a batch, which is then retried whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Container, Mapping, Sequence

from attributes.admission import Admission
from attributes.clock import DEFAULT_REFRESH_MS
from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.limits import EventLimits
from attributes.policies import DEFAULT_POLICY, MergePolicy
from attributes.profile import Retraction
from attributes.records import RecordMapping
from attributes.ruleset import RuleSet
from attributes.stitching import LIMIT, TRUST_NONE, SourceTrust
from streams.announcements import Announcer
from streams.decoding import BatchDecoding, where
from streams.entity import ComputeFailed, EntityProcessor
from streams.erasures import erase_segments
from streams.logs import Checkpoint, LogHistory, judge
from streams.records import (
    BatchReport,
    DeadLetterSink,
    Decoded,
    Identified,
    ListDeadLetters,
    Record,
)
from streams.refusals import RefusalLog
from streams.rule_versions import NoteStart, RuleVersions
from traitflow.store import ProfileStore, RulesChanged

__all__ = [
    "ENTITY",
    "BatchProcessor",
    "BatchReport",
    "DeadLetterSink",
    "Decoded",
    "ListDeadLetters",
    "Record",
]

log = logging.getLogger(__name__)

#: the entity built when no other is declared
ENTITY = "user"


class BatchProcessor(RuleVersions, BatchDecoding):
    """Applies batches of records, and re-renders profiles whose windows moved.

    `identities`: the `user` entity's identity rules, or every entity's (entity ->
    rules, in the order they are processed); each entity is computed with its own
    rules (`RuleSet.of`). `clock` gives the processing time (epoch seconds) that
    windows are evaluated at; it is read once per batch. `trust`: what each source's
    events may link (`attributes.stitching`); the worker's is the settings'. Not given,
    no source is trusted, as a source the settings do not name is not: a processor
    built without the settings (a tool, a test) links nothing unless told which
    sources to trust. Both entry points hold `lock`, so a timer's expiry round and a
    batch never work on the same profiles at once."""

    def __init__(
        self,
        rules: RuleSet,
        store: ProfileStore,
        dead_letters: DeadLetterSink,
        *,
        clock: Callable[[], float] = time.time,
        remembered_renders: int = 100_000,
        identities: IdentityRules | Mapping[str, IdentityRules] | None = None,
        sources: Mapping[str, str] | None = None,
        policy: MergePolicy = DEFAULT_POLICY,
        retractions: Mapping[str, Retraction] | None = None,
        limits: EventLimits | None = None,
        dedupe: bool = True,
        logs: LogHistory | None = None,
        anonymous_ttl_ms: int | None = None,
        anonymous_types: Collection[str] = ("anonymous_id",),
        audience_topic: str | None = None,
        profile_topic: str | None = None,
        records: Mapping[str, Mapping[str, RecordMapping]] | None = None,
        reload: Callable[[], Awaitable[tuple[RuleSet, int]]] | None = None,
        note_start: NoteStart | None = None,
        time_refresh_ms: int = DEFAULT_REFRESH_MS,
        trust: SourceTrust = TRUST_NONE,
    ) -> None:
        self.store = store
        #: the current rules and their version, read again when a commit finds the
        #: rules changed (`streams.rule_switch`); None: the rules never change
        self.reload = reload
        #: notes where a partition's computing at a rules version starts (`_note_starts`)
        self.note_start = note_start
        #: called at each switch of rules version (`RuleVersions.switch`)
        self.on_switch: Callable[[], None] | None = None
        #: (partition, rules version) noted; the first offset of each partition's batch
        self._noted: set[tuple[str, int]] = set()
        self._held: set[tuple[str, int]] = set()
        self._mine: dict[tuple[str, str], set[int]] = {}
        self._unfinished = False
        self._firsts: dict[str, int] = {}
        self._committed: dict[int, dict[tuple[str, str], list[int]]] = {}
        self.logs = logs
        #: partition -> (the offset after the last batch committed here, its epoch)
        self._next: dict[str, tuple[int, int]] = {}
        self.limits = limits or EventLimits()
        self.dedupe = dedupe
        self.dead_letters = dead_letters
        #: links refused by sources' trust levels, logged at a bounded rate
        self.refusal_log = RefusalLog()
        self.clock = clock
        if not isinstance(identities, Mapping):
            identities = {ENTITY: identities or IdentityRules(DEFAULT_USER)}
        sources, retractions = dict(sources or {}), dict(retractions or {})  # shared
        self.sources = sources
        self.entities = {
            entity: EntityProcessor(
                entity,
                rules=rules.of(entity),
                identities=identity_rules,
                store=store,
                sources=sources,
                policy=policy,
                retractions=retractions,
                remembered_renders=remembered_renders,
                idle_ttl_ms=anonymous_ttl_ms,
                anonymous_types=frozenset(anonymous_types),
                announcer=Announcer(
                    entity=entity, audience_topic=audience_topic, profile_topic=profile_topic
                ),
                records=(records or {}).get(entity),
                time_refresh_ms=time_refresh_ms,
                trust=trust,
            )
            for entity, identity_rules in identities.items()
        }
        self.lock = asyncio.Lock()
        #: the checks an event passes before any entity computes it (the HTTP ingest
        #: makes the same ones before it acknowledges)
        self.admission = Admission(
            {entity: p.identities for entity, p in self.entities.items()}, self.limits
        )

    def forget_renders(self) -> None:
        """Drop the remembered renders (their states are gone from the store's cache)."""
        for entity in self.entities.values():
            entity.forget_renders()

    def _read_clock(self) -> int:
        now = int(self.clock() * 1000)
        for entity in self.entities.values():
            entity.now = now
        return now

    def _set_floors(self, records: Sequence[Record]) -> None:
        """Per input partition, the offset before the batch's first: every record
        below it is committed (batches of a partition run one after another)."""
        floors: dict[str, int] = {}
        for record in records:
            log = record.log
            if record.offset <= floors.get(log, record.offset):
                floors[log] = record.offset - 1
        for entity in self.entities.values():
            entity.floors = floors

    async def process(
        self, records: Sequence[Record], decoded: Decoded | None = None
    ) -> BatchReport:
        """Apply a batch; `decoded`, if given, is `decode(records)` done beforehand."""
        async with self.lock:
            return await self._process(records, decoded)

    async def _process(self, records: Sequence[Record], decoded: Decoded | None) -> BatchReport:
        """Decode, then have each entity compute and commit its events. An event that
        one entity cannot apply is a dead letter, and the entities after it skip it."""
        self._read_clock()
        report = BatchReport(records=len(records))
        firsts: dict[str, Record] = {}
        for record in records:
            first = firsts.get(record.source)
            if first is None or record.offset < first.offset:
                firsts[record.source] = record
        if self.logs is not None:
            records = await self._place(records, firsts, report)
        self._firsts = {source: first.offset for source, first in firsts.items()}
        self._begin()
        self._set_floors(records)
        if decoded is None or decoded.records is not records:  # none, or before epochs
            decoded = self.decode(records)
        rejected = list(decoded.rejected)  # a retried batch starts again from the decode
        claims = decoded.claims

        # The batch's checkpoints are written while it is computed, not after: one
        # round trip less per batch. A checkpoint of a batch that then fails is
        # harmless: the batch is read again from the same offset, the same record.
        recording = None
        if self.logs is not None:
            checkpoints = [(p, Checkpoint.of(first)) for p, first in firsts.items()]
            recording = asyncio.ensure_future(self.logs.record(checkpoints))
        try:
            await self._entity_batches(claims, rejected, report)
        except BaseException:
            if recording is not None:
                recording.cancel()
                with contextlib.suppress(BaseException):
                    await recording
            raise
        if recording is not None:
            await recording
            for record in records:
                self._next[record.source] = (record.offset + 1, record.epoch)
        report.dead_lettered = len(rejected)
        self._unfinished = False
        for refusal in report.refusals:
            if refusal.kind == LIMIT:
                log.info(
                    "profile %s: %s %r: %s", refusal.profile, *refusal.identity, refusal.reason
                )
        self.refusal_log.note(report.refusals)  # those of trust levels, at a bounded rate
        for skip in report.skips:
            if skip.kind == "wrong_type":  # the others are routine: counted, not logged
                log.info(
                    "attribute %s skipped event %s: %s",
                    skip.attribute,
                    skip.message_id,
                    skip.reason,
                )
        return report

    async def _entity_batches(
        self,
        claims: Mapping[str, list[Identified]],
        rejected: list[tuple[Record, str]],
        report: BatchReport,
    ) -> None:
        """Each entity's events, computed and committed in turn; then the dead letters."""
        sent: set[int] = set()  # ids of the rejected records already dead-lettered
        undecoded = len(rejected)
        for entity, events in claims.items():
            if len(rejected) > undecoded:  # an earlier entity could not apply some
                broken = {id(record) for record, _ in rejected}
                events = [item for item in events if id(item.record) not in broken]
            for segment in erase_segments(events) if events else ():  # an erase: alone
                await self._entity_batch(
                    self.entities[entity], segment, rejected=rejected, sent=sent, report=report
                )
        await self._send(rejected, sent)

    async def _place(
        self, records: Sequence[Record], firsts: dict[str, Record], report: BatchReport
    ) -> Sequence[Record]:
        """`records`, each with its partition's epoch: the batch of a partition that does
        not continue this processor's previous one is judged against its history, and
        a reset starts a new epoch (`streams.logs`)."""
        epochs: dict[str, int] = {}
        assert self.logs is not None
        for partition, first in firsts.items():
            known = self._next.get(partition)
            if known is not None and known[0] == first.offset:
                epochs[partition] = known[1]
                continue
            history = await self.logs.read(partition)
            checkpoint = Checkpoint.of(first)
            verdict, why = judge(history, checkpoint)
            if verdict == "reset":
                epochs[partition] = await self.logs.restart(partition, checkpoint)
                report.resets.append(partition)
                log.error(
                    "input partition %s was reset: %s. Its records are applied as a new log "
                    "(epoch %d); offsets applied before stay applied. If the broker lost "
                    "data or the topic was made again, events published meanwhile and not "
                    "re-sent are missing: re-publish them (a producer retry with the same "
                    "messageId counts once). See README 'Offsets that go backwards'.",
                    partition,
                    why,
                    epochs[partition],
                )
            else:
                epochs[partition] = history.epoch
        if not any(epochs.values()):
            return records
        return [dataclasses.replace(r, epoch=epochs[r.source]) for r in records]

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
        *,
        rejected: list[tuple[Record, str]],
        sent: set[int],
        report: BatchReport,
    ) -> None:
        """Compute and commit one entity's events until every one's effect is
        committed (another worker may have written some of its profiles or identities
        meanwhile: the events that read them are then computed again on top). Each
        attempt is one `Checkout`: the states it loaded and did not commit are
        forgotten when it ends, whichever way it ends, so the next attempt reads the
        stored ones.

        When computing the batch raises (`ComputeFailed`), the events are done in two
        halves, one after the other (so each partition stays in offset order), until
        the event that breaks it is alone: a dead letter. One bad event in n costs
        about 2·log2(n) smaller batches, not n."""
        while events:
            failed: list[tuple[Record, str]] = []
            broke: ComputeFailed | None = None
            async with processor.checkout() as work:
                try:
                    stitched = await processor.stitch(work, events, failed)
                except ComputeFailed as exc:
                    broke = exc
                else:
                    if not failed:
                        await self._send(rejected, sent)  # durable before the commit
                        try:
                            events = await self._commit(
                                processor, work, stitched, events=events, report=report
                            )
                        except RulesChanged:  # what committed is noted: again, newer rules
                            await self.switch_to_current()
                            continue
            if broke is not None:
                if len(events) == 1:
                    log.warning("event %s/%s@%s broke stitching", *where(events[0].record))
                    rejected.append((events[0].record, f"event could not be stitched: {broke}"))
                    return
                half = len(events) // 2
                for part in (events[:half], events[half:]):
                    await self._entity_batch(
                        processor, part, rejected=rejected, sent=sent, report=report
                    )
                return
            if failed:
                # the events that broke are dead letters with no effect on this entity,
                # not even on identities: its events are stitched again without them
                known = {id(record) for record, _ in rejected}
                rejected += [(record, why) for record, why in failed if id(record) not in known]
                broken = {id(record) for record, _ in failed}
                events = [item for item in events if id(item.record) not in broken]

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
                if processor.rules.changes_on_time:
                    try:
                        written += await processor.expire(source, limit)
                    except RulesChanged:  # the next round re-renders with the new rules
                        await self.switch_to_current()
                        return written
            return written
