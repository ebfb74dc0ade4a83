"""Backfill: an attribute made or changed through the API is computed over the history
still retained in the ingest topics, then joined with what the workers computed live
since they switched to it, with no event counted twice.

Where the live computation began is a fact per input partition: before its first
commit at a rules version, a worker notes each partition's first offset in the batch
(`tf:rs:{partition}`, `BatchProcessor._note_starts`). Every event below it was
committed under older rules (without the attribute), every one from it on under rules
at least that new (with it), but for what a batch that switched versions midway had
committed at the older one, noted with the start. So the backfill reads each
partition from its earliest retained offset up to there, and those (`streams.history`).
A partition that no batch has reached at that version is
read to its end, once the workers' consumer group has committed that end (nothing of
it is in flight). Each event is applied, by the worker's own `apply_event` with the
attribute alone, to a scratch state of the profile its identities point to now; each
scratch state is then merged into the live one as stitching merges two profiles
(`attributes.catalog.join_history`), and the attribute becomes ACTIVE. Reading the
history: `streams.history_reader`.

A source delete job's recomputation (`attributes.recomputation`) is a backfill of every
attribute at once, in the states of its generation (`recompute`), with the job's
source's history left out below its horizon, then a pass that writes every profile
once more so that each view shows the new generation (`render`).

One process runs backfills at a time (a lease in Redis: `BackfillRunner`): the backfill
process (`streams.backfill_process`), which computes no live batches, or, with
TRAITFLOW_BACKFILL_PROCESS off, a worker, in the same process and event loop as the
live batches. There live batches come first: the backfill computes in short slices
holding the processor's lock (`streams.history_reader`), and joins a few profiles at a
time under the same lock.

Limits: the history is held in memory, one scratch state per profile, until joined;
a producer's retry of one event on both sides of the start is counted twice; a
backfill whose worker dies starts again from the beginning once its lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from attributes.aggregators import DERIVED
from attributes.catalog import ManagedAttribute, Status, compiled, join_history, origin
from attributes.profile import ProfileState, render_view
from attributes.recomputation import Horizons
from attributes.rules import Generations, parse_rules
from attributes.ruleset import CompiledAttribute, RuleSet
from streams.entity import EntityProcessor
from streams.history import text
from streams.history_reader import HistoryReader, Target
from streams.processor import BatchProcessor
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.rule_catalog import RECOMPUTATION, Catalog, RuleCatalog, RuleSource
from traitflow.spread_scan import profile_ids
from traitflow.spread_store import SpreadProfileStore
from traitflow.store import Conflict, Expected, RulesChanged

log = logging.getLogger(__name__)

#: profiles joined (or rendered) per hold of the processor's lock
JOIN_CHUNK = 100


@dataclass(frozen=True, slots=True)
class Preview:
    """A profile's value of an attribute as served now, and after a backfill."""

    profile: str
    before: object
    after: object


class Backfill:
    """Computes attributes over the retained history and joins them: one made or
    changed through the API (`run`), or every one, for a source delete job
    (`recompute`)."""

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        catalog: RuleCatalog,
        client: aioredis.Redis,
        source: RuleSource | None = None,
        *,
        spread: SpreadProfileStore | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.catalog = catalog
        self.client = client
        self.keys = KeyLayout(settings.key_prefix)
        #: the profiles on the spread layout (the processor's store reads and commits
        #: them; `render` scans them here, and the rules copies are raised here)
        self.spread = spread
        #: the rule file (`recompute` computes it with the catalog's attributes)
        self.source = source
        #: whether progress is saved (a dry run saves none)
        self.recording = True
        self.reader = HistoryReader(settings, processor, client, self._progress)

    async def run(self, attribute: ManagedAttribute, catalog: Catalog | None = None) -> bool:
        """Backfill `attribute` (PROCESSING, at its version), in the states `catalog`
        serves (default: the current one's); whether it is done (False: it changed or
        left the rules meanwhile, and its new definition is next)."""
        if attribute.definition.get("function") == DERIVED:
            # computed from the others at each render: no state, no history. (Compiled
            # alone it would not compile: what it reads is not there.)
            return True
        catalog = catalog or await self.catalog.snapshot()
        rules = self._alone(attribute, catalog.generation)
        if not rules.attributes:
            return True
        target = Target(attribute.entity, attribute.version, rules, attribute.id)
        return await self._backfill(target, catalog.horizons)

    async def recompute(self, catalog: Catalog) -> bool:
        """Backfill the recomputation `catalog` runs (`attributes.recomputation`): every
        attribute, in the states of its generation, without what the horizons exclude;
        whether it is done (False: it started again meanwhile)."""
        running = catalog.recomputation
        assert running is not None
        source = self.source or RuleSource.read(self.settings.rules_path, self.settings.entities)
        rules = source.compose(catalog.attributes, Generations(running.version))
        for entity in rules.entities:
            target = Target(entity, running.version, rules.of(entity), RECOMPUTATION)
            if target.rules.attributes and not await self._backfill(target, catalog.horizons):
                return False
        return True

    async def _backfill(self, target: Target, horizons: Horizons) -> bool:
        started = int(time.time() * 1000)
        await self._switch_everywhere()
        spans = await self.reader.spans(target, horizons, started)
        histories = await self.reader.read(target, spans, started)
        return await self._join(target, histories, started)

    async def preview(self, attribute: ManagedAttribute, sample: int) -> list[Preview]:
        """What a backfill would make of `attribute` for up to `sample` profiles, with
        nothing written: each one's served value now, and after. For a PROCESSING
        attribute, after is the history joined with the live value; for any other, the
        attribute over the whole retained topic (a DRAFT's values to be; an ACTIVE
        one's recomputation, which should equal what is served)."""
        self.recording = False
        catalog = await self.catalog.snapshot()
        rules = self._alone(attribute, catalog.generation)
        target = Target(attribute.entity, attribute.version, rules, attribute.id)
        whole = attribute.status is not Status.PROCESSING
        spans = await self.reader.spans(target, catalog.horizons, 0, whole=whole)
        histories = await self.reader.read(target, spans, 0)
        chosen = sorted(histories)[:sample]
        store = self.processor.entities[attribute.entity].store
        stored = await store.load(attribute.entity, chosen)
        views = await store.read_views(attribute.entity, [("id", pid) for pid in chosen])
        now = int(time.time() * 1000)
        found = []
        for pid, raw in zip(chosen, views, strict=True):
            before = orjson.loads(raw)["attributes"].get(attribute.name) if raw else None
            state = stored.get(pid, ProfileState(id=pid, entity=attribute.entity))
            if whole:
                state = ProfileState(id=pid, entity=attribute.entity)
            join_history(state, histories[pid], rules.attributes)
            after = render_view(state, rules, now)["attributes"].get(attribute.name)
            found.append(Preview(pid, before, after))
        return found

    def _alone(self, attribute: ManagedAttribute, generation: int) -> RuleSet:
        """`attribute` compiled alone, as the workers compile it (same state key)."""
        return parse_rules(
            "attributes: []\n", "backfill", list(self.settings.entities),
            [(origin(attribute.id), compiled(attribute))], Generations(generation),
        )  # fmt: skip

    async def _progress(self, progress_id: str, **progress: object) -> None:
        if self.recording:
            await self.catalog.set_progress(progress_id, progress)

    async def _join(self, target: Target, histories: dict[str, ProfileState], started: int) -> bool:
        """Fold the scratch states into the stored profiles, a chunk at a time; False if
        a state key of the target left the rules the worker computes meanwhile (the
        attribute changed, or the generation)."""
        targets = target.rules.attributes
        pids = list(histories)
        for at in range(0, len(pids), JOIN_CHUNK):
            chunk = {pid: histories[pid] for pid in pids[at : at + JOIN_CHUNK]}
            if not await self._fold(target.entity, chunk, targets):
                return False
            await self._progress(
                target.progress_id, phase="joining", done=min(len(pids), at + JOIN_CHUNK),
                total=len(pids), started_ms=started,
            )  # fmt: skip
        return True

    async def render(self) -> None:
        """Write every stored profile once more, at the rules the workers compute now: a
        recomputation's rendering (`attributes.recomputation`), after which each view
        shows the generation now served. A chunk at a time, at the backfill's rate."""
        started, done = int(time.time() * 1000), 0
        await self._switch_everywhere()
        for name in self.processor.entities:
            began = time.monotonic()
            async for pids in self._profile_ids(name):
                if pids:
                    empty = {pid: ProfileState(id=pid, entity=name) for pid in pids}
                    await self._fold(name, empty, (), rendering=True)
                done += len(pids)
                await self._progress(
                    RECOMPUTATION, phase="rendering", done=done, started_ms=started
                )
                rate = self.settings.backfill_rate_per_s
                await asyncio.sleep(max(0.0, len(pids) / rate - (time.monotonic() - began)))
                began = time.monotonic()

    async def _profile_ids(self, entity: str) -> AsyncIterator[list[str]]:
        """The ids of every stored profile of `entity`, a chunk at a time."""
        if self.spread is not None:
            async for pids in profile_ids(
                self.spread.protocol, self.spread.layout, entity, JOIN_CHUNK
            ):
                yield pids
            return
        prefix = self.keys.state_prefix(entity)
        cursor = 0
        while True:
            cursor, keys = await self.client.scan(cursor, match=prefix + "*", count=JOIN_CHUNK)
            yield [text(key)[len(prefix) :] for key in keys]
            if not cursor:
                break

    async def _switch_everywhere(self) -> None:
        """On the spread layout, every bucket's copy of the rules version raised to the
        catalog's (`traitflow.spread_rules`) before history is read or every profile
        rendered: from then on no commit computed at an older version lands in any
        bucket, so every event is counted by the history or live, once, and no view is
        written at an older generation behind the render (its own commits too: one
        made at an older version is refused, and the processor switches). Done here
        whoever did it first, so that exactness never waits on another process."""
        if self.spread is not None:
            current = max(await self.catalog.version(), self.processor.rules_version)
            await self.spread.raise_rules(current)

    async def _fold(
        self,
        entity: str,
        histories: Mapping[str, ProfileState],
        targets: tuple[CompiledAttribute, ...],
        *,
        rendering: bool = False,
    ) -> bool:
        """`fold` under the processor's lock, made again on top of a live commit that
        came first (`Conflict`) and at the current rules when they moved; False if a
        state key of `targets` left those rules (the attribute changed, or the
        generation)."""
        while True:
            try:
                async with self.processor.lock:
                    computing = self.processor.entities[entity]
                    if not {t.key for t in targets} <= computing.rules.state_keys:
                        return False
                    now = int(self.processor.clock() * 1000)
                    await fold(computing, histories, targets, now, rendering=rendering)
                    return True
            except Conflict:
                continue  # a live batch wrote one of them meanwhile: again, on top
            except RulesChanged:
                await self.processor.switch_to_current()


async def fold(
    entity: EntityProcessor,
    histories: Mapping[str, ProfileState],
    targets: tuple[CompiledAttribute, ...],
    now: int,
    *,
    rendering: bool = False,
) -> int:
    """Merge `histories` into the stored profiles of `entity` and write them, in one
    commit at the processor's rules version; how many were written. Conflict if one
    changed since it was loaded (nothing is written). `rendering`: each is written,
    its view rendered whole, even with nothing to merge."""
    entity.now = now
    names = set(entity.rules.names) if rendering else {t.name for t in targets}
    async with entity.checkout() as work:
        states = await work.load(list(histories))
        loaded = {pid: state.version for pid, state in states.items()}
        writes = []
        for pid, state in states.items():
            entity.views.fit(state)
            if not join_history(state, histories[pid], targets) and not rendering:
                continue
            state.version += 1
            source = next(iter(state.offsets), "").split("@")[0]  # its owner expires it
            write = entity.views.write(state, source, touched=set(names), now=now)
            entity.rerendered(write)
            writes.append(write)
        if writes:
            if entity.announcer.announces:
                entity.announcer.announce(writes, (), now)
            versions: dict[str, int | None] = {w.state.id: loaded[w.state.id] for w in writes}
            await work.commit(writes, expected=Expected(versions=versions))
    return len(writes)
