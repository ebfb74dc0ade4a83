"""The rules version a processor computes at (`RuleVersions`, a part of
`streams.processor.BatchProcessor`): switching to another between batches, and noting
where each partition's computing at a version starts.

It is apart from the batch's path because it changes with the rule catalog
(`traitflow.rule_catalog`, `streams.rule_switch`, `streams.backfill`), not with how
a batch is computed: every commit is made at the version the processor computes at,
or refused (`traitflow.store.RulesChanged`); the processor then switches here and
computes the batch again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial

from attributes.ruleset import RuleSet
from streams.effects import Stitched
from streams.entity import EntityProcessor
from streams.records import BatchReport, Identified
from traitflow.state_cache import Checkout
from traitflow.store import RulesChanged

#: the processor's logger: its messages keep the name they had before this module
log = logging.getLogger("streams.processor")

#: partition -> `"{entity}:{version}"` -> offsets at or past the partition's noted start
#: that this batch committed at that older rules version (`RuleVersions._also`)
Also = Mapping[str, Mapping[str, Sequence[int]]]
#: notes where each partition's computing at a rules version starts, what `Also` says,
#: and the redelivered offsets (an `Also` of entity alone: the older version is found
#: from the notes) of the partitions whose start note is this processor's; returns
#: the partitions whose start note it just made (`streams.backfill_runner.start_notes`)
NoteStart = Callable[[int, Mapping[str, int], Also, Also], Awaitable[Collection[str]]]


class RuleVersions:
    """What `BatchProcessor` does with rules versions; its `__init__` sets these."""

    entities: dict[str, EntityProcessor]
    reload: Callable[[], Awaitable[tuple[RuleSet, int]]] | None
    note_start: NoteStart | None
    on_switch: Callable[[], None] | None
    _noted: set[tuple[str, int]]
    #: (partition, rules version) whose start note is this processor's (`_redelivered`)
    _held: set[tuple[str, int]]
    #: (entity, partition) -> offsets a failed attempt at this batch committed
    _mine: dict[tuple[str, str], set[int]]
    _unfinished: bool
    _firsts: dict[str, int]
    _next: dict[str, tuple[int, int]]
    #: rules version -> (entity, partition) -> offsets of this batch committed at it
    _committed: dict[int, dict[tuple[str, str], list[int]]]

    @property
    def rules_version(self) -> int:
        """The rules version the entities compute with (`traitflow.rule_catalog`)."""
        return next(iter(self.entities.values())).rules_version

    def switch(self, rules: RuleSet, rules_version: int) -> None:
        """Compute with `rules`, the rules version `rules_version`, from now on. Call
        it holding `lock`, between batches."""
        for entity, processor in self.entities.items():
            processor.switch(rules.of(entity), rules_version)
        if self.on_switch is not None:
            self.on_switch()
        log.info("switched to rules version %d", rules_version)

    async def switch_to_current(self) -> None:
        """A commit found the rules changed: switch to the current ones (`reload`)."""
        if self.reload is None:
            raise RuntimeError("the rules version changed, and this processor cannot reload")
        rules, version = await self.reload()
        self.switch(rules, version)

    async def _note_starts(self, entity: str = "", redelivered: Sequence[Identified] = ()) -> None:
        """Before the batch's first commit at the current rules version, note where
        each of its partitions starts (`note_start`): a backfill of an attribute of that
        version reads the partition's history up to there (`streams.backfill`).

        A batch that switched versions midway (a commit refused with `RulesChanged`)
        may have committed part of its events at the older version already: those of
        another entity, or those a conflict did not touch (`EntityProcessor.commit`).
        Their offsets are at or past the start noted now, yet they were computed
        without the new version's attributes: they are noted with it (`_also`), and a
        backfill reads them too, else they would be counted neither by the history nor
        live. So are `redelivered`, `entity`'s events skipped as already applied
        (`_redelivered`)."""
        await self._note(self._firsts, self._also(), self._redelivered(entity, redelivered))

    def _redelivered(self, entity: str, items: Sequence[Identified]) -> Also:
        """The offsets of `items` (skipped: applied before) to note as history: those of
        partitions whose start note at this version is this processor's, or is about to
        be (the script makes it and notes them in one step), but those this processor
        committed itself (a midway switch, a failed attempt at this batch).

        Why exact: every worker notes a partition's start at a version before its first
        commit at it, and the first note stays; so when this processor's note is the
        one that takes effect, no event of the partition was committed at this version
        yet, and after it none is committed at an older one (the rules version a commit
        checks is the current one: `traitflow.store.RulesChanged`). A record skipped
        here that another worker applied was applied at an older version, at or after
        the newest older start noted at or before it (each commit follows its
        version's note): noted as `"{version}:{entity}:{that version}"`, it is history
        for exactly the attributes made after it was applied up to this version. A
        later worker's note fails, and notes nothing: never twice. (Nor at all what this
        processor did not reach before it died or lost the partition: README, the
        backfill's limits.)"""
        version = self.rules_version
        found: dict[str, list[int]] = {}
        mine: dict[str, set[int]] = {}  # partition -> offsets this processor committed
        for item in items:
            partition, offset = item.record.source, item.record.offset
            if (partition, version) in self._noted and (partition, version) not in self._held:
                continue
            own = mine.get(partition)
            if own is None:
                own = mine[partition] = set(self._mine.get((entity, partition), ()))
                for at in self._committed.values():
                    own.update(at.get((entity, partition), ()))
            if offset not in own:
                found.setdefault(partition, []).append(offset)
        return {p: {entity: sorted(offsets)} for p, offsets in found.items()}

    def _begin(self) -> None:
        """A batch starts. If the previous one failed, this is it again: what it
        committed is this processor's own, not another worker's (`_redelivered`)."""
        if self._unfinished:
            for committed in self._committed.values():
                for key, offsets in committed.items():
                    self._mine.setdefault(key, set()).update(offsets)
        else:
            self._mine = {}
        self._committed = {}
        self._unfinished = True

    def forget_positions(self) -> None:
        """Forget where each partition's batches were: after a rebalance, another worker
        may have read on. (Not at a rules switch: `note_positions` notes them then.)
        The start notes held end too: what is applied then may be this processor's."""
        self._next.clear()
        self._held.clear()

    async def _commit(
        self,
        processor: EntityProcessor,
        work: Checkout,
        stitched: Stitched,
        *,
        events: list[Identified],
        report: BatchReport,
    ) -> list[Identified]:
        """Note the starts, then commit `events`' effect (`EntityProcessor.commit`);
        return the events to compute again. A commit that fails without saying what
        it wrote (a lost reply) may have written all of it: this batch, computed again,
        finds those events applied by this processor, not by another (`_redelivered`)."""
        entity = processor.entity
        await self._note_starts(entity, stitched.redelivered)
        done = partial(self._committed_here, entity)
        try:
            redo = await processor.commit(work, stitched, report, committed=done)
        except RulesChanged:
            raise
        except BaseException:
            for item in events:
                self._mine.setdefault((entity, item.record.source), set()).add(item.record.offset)
            raise
        again = {id(item) for item in redo}
        done([e for e in events if id(e) not in again])
        return redo

    def _committed_here(self, entity: str, events: Sequence[Identified]) -> None:
        """`events` of `entity` were committed at the current rules version."""
        at = self._committed.setdefault(self.rules_version, {})
        for item in events:
            record = item.record
            at.setdefault((entity, record.source), []).append(record.offset)

    def _also(self) -> dict[str, dict[str, list[int]]]:
        """What this batch committed at versions older than the current one, as
        `note_start` takes it (`Also`)."""
        version = self.rules_version
        also: dict[str, dict[str, list[int]]] = {}
        for older, committed in self._committed.items():
            if older < version:
                for (entity, partition), offsets in committed.items():
                    also.setdefault(partition, {})[f"{entity}:{older}"] = sorted(offsets)
        return also

    async def note_positions(self) -> None:
        """At a switch between batches: the offset each partition this worker reads
        resumes at is where its computing at the new version starts (a partition with
        no traffic since gets no batch to note it by). Hold `lock`."""
        await self._note({p: offset for p, (offset, _) in self._next.items()}, {})

    async def _note(
        self, offsets: Mapping[str, int], also: Also, redelivered: Also | None = None
    ) -> None:
        """Note `offsets` (partition -> offset) at the current rules version, each
        partition once per version, with what `also` and `redelivered` say of it."""
        version = self.rules_version
        fresh = {p: o for p, o in offsets.items() if (p, version) not in self._noted}
        again = redelivered or {}
        if (fresh or again) and self.note_start is not None:
            took = await self.note_start(
                version, fresh, {p: also[p] for p in fresh if p in also}, again
            )
            self._noted.update((p, version) for p in fresh)
            self._held.update((p, version) for p in took)
