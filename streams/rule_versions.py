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
from collections.abc import Awaitable, Callable, Mapping, Sequence

from attributes.ruleset import RuleSet
from streams.entity import EntityProcessor
from streams.records import Identified

#: the processor's logger: its messages keep the name they had before this module
log = logging.getLogger("streams.processor")

#: partition -> `"{entity}:{version}"` -> offsets at or past the partition's noted start
#: that this batch committed at that older rules version (`RuleVersions._also`)
Also = Mapping[str, Mapping[str, Sequence[int]]]
#: notes where each partition's computing at a rules version starts, and what `Also`
#: says (`streams.backfill_runner.start_notes`)
NoteStart = Callable[[int, Mapping[str, int], Also], Awaitable[None]]


class RuleVersions:
    """What `BatchProcessor` does with rules versions; its `__init__` sets these."""

    entities: dict[str, EntityProcessor]
    reload: Callable[[], Awaitable[tuple[RuleSet, int]]] | None
    note_start: NoteStart | None
    on_switch: Callable[[], None] | None
    _noted: set[tuple[str, int]]
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

    async def _note_starts(self) -> None:
        """Before the batch's first commit at the current rules version, note where
        each of its partitions starts (`note_start`): a backfill of an attribute of that
        version reads the partition's history up to there (`streams.backfill`).

        A batch that switched versions midway (a commit refused with `RulesChanged`)
        may have committed part of its events at the older version already: those of
        another entity, or those a conflict did not touch (`EntityProcessor.commit`).
        Their offsets are at or past the start noted now, yet they were computed
        without the new version's attributes: they are noted with it (`_also`), and a
        backfill reads them too, else they would be counted neither by the history nor
        live."""
        await self._note(self._firsts, self._also())

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

    async def _note(self, offsets: Mapping[str, int], also: Also) -> None:
        """Note `offsets` (partition -> offset) at the current rules version, each
        partition once per version, with what `also` says of it."""
        version = self.rules_version
        fresh = {p: o for p, o in offsets.items() if (p, version) not in self._noted}
        if fresh and self.note_start is not None:
            await self.note_start(version, fresh, {p: also[p] for p in fresh if p in also})
            self._noted.update((p, version) for p in fresh)
