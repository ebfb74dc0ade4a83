"""Where the computed attributes made through the API are kept, with the rules
version: one number that every change increments, so that a worker knows, by one
GET, whether its rules are still current (`streams.rule_switch`).

A change is read, checked against everything stored and written in one optimistic
transaction (WATCH the version): two API processes changing attributes at once
cannot both pass a check made against a set the other has changed. The rule file's
attributes are not here: each process reads the file (`RuleSource`).
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from attributes.catalog import ManagedAttribute, Status, live_definitions
from attributes.recomputation import Horizons, Recomputation, kept_jobs, widened
from attributes.rules import FIRST, Generations, RuleFileError, RuleProblem, parse_rules
from attributes.ruleset import RuleSet
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_client import Redis, async_client
from traitflow.spread_rules import CopiesRaiser


@dataclass(frozen=True, slots=True)
class Catalog:
    """The managed attributes at one rules version, and which generation of every
    attribute's states is served and which is being recomputed (`attributes.
    recomputation`)."""

    version: int = 0
    attributes: tuple[ManagedAttribute, ...] = ()
    generation: int = 0
    recomputation: Recomputation | None = None
    #: the horizons of the topics of sources a job deleted (`attributes.recomputation`)
    horizons: Horizons = field(default_factory=dict)
    #: the source delete jobs whose recomputation is done (the newest ones)
    recomputed: tuple[str, ...] = ()

    @property
    def generations(self) -> Generations:
        running = self.recomputation
        return Generations(self.generation, running.computing if running else None)

    def get(self, attribute_id: str) -> ManagedAttribute | None:
        return next((a for a in self.attributes if a.id == attribute_id), None)

    def named(self, name: str) -> ManagedAttribute | None:
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True, slots=True)
class Change:
    """What an edit stores: `put` replaces or adds an attribute, `drop` removes one;
    `recompute_for` starts (or joins) a recomputation for a source delete job, whose
    source's `topics` get this change's version as their horizon; `recomputed` moves the
    recomputation that started at that version on: from computing to rendering (its
    generation served), from rendering to done."""

    put: ManagedAttribute | None = None
    drop: str | None = None
    recompute_for: str | None = None
    topics: tuple[str, ...] = ()
    recomputed: int | None = None

    @property
    def empty(self) -> bool:
        made = (self.put, self.drop, self.recompute_for, self.recomputed)
        return all(part is None for part in made)


def new_id() -> str:
    return f"ca-{uuid.uuid4().hex[:12]}"


class RuleCatalog(abc.ABC):
    @abc.abstractmethod
    async def version(self) -> int:
        """The current rules version (0: nothing was ever changed)."""

    @abc.abstractmethod
    async def snapshot(self) -> Catalog:
        """The attributes and the version they are at, read together."""

    @abc.abstractmethod
    async def change(self, edit: Callable[[Catalog], Change]) -> Catalog:
        """Apply `edit` to the current catalog and store what it returns, with the
        version incremented; the catalog after. `edit` raises to refuse (nothing is
        stored), returns an empty `Change` to store nothing, and may be called again if
        another change came first."""

    @abc.abstractmethod
    async def set_progress(self, attribute_id: str, progress: Mapping[str, Any]) -> None:
        """Record what an attribute's backfill has done (`ManagedAttribute.progress`):
        not a change of the rules, so the version stays."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


def _applied(catalog: Catalog, change: Change) -> Catalog:
    version = catalog.version + 1
    replaced = {change.drop, change.put.id if change.put is not None else None}
    kept = [a for a in catalog.attributes if a.id not in replaced]
    if change.put is not None:
        kept.append(replace(change.put, version=version))
    kept.sort(key=lambda a: (a.created_ms, a.id))
    after = replace(catalog, version=version, attributes=tuple(kept))
    running = catalog.recomputation
    if change.recomputed is not None and running is not None:
        assert running.version == change.recomputed, "a recomputation ends at its version"
        if running.rendering:  # every view shows the new generation: done
            done = kept_jobs(catalog.recomputed, running.jobs)
            return replace(after, recomputation=None, recomputed=done)
        # what was PROCESSING is in the new generation's history as well
        activated = tuple(
            replace(a, status=Status.ACTIVE, version=version)
            if a.status is Status.PROCESSING
            else a
            for a in kept
        )
        return replace(
            after,
            attributes=activated,
            generation=running.version,
            recomputation=replace(running, rendering=True, progress={}),
        )
    if change.recompute_for is not None:
        started = running or Recomputation(version, ())
        return replace(
            after,
            recomputation=started.joined(change.recompute_for, version),
            horizons=widened(catalog.horizons, change.topics, version),
        )
    counted = _counted(catalog.attributes) != _counted(after.attributes)
    if running is not None and not running.rendering and counted:
        return replace(after, recomputation=running.restarted(version))
    return after


def _counted(attributes: Sequence[ManagedAttribute]) -> list[tuple[str, dict[str, Any]]]:
    """What the live attributes count: a change of it restarts a recomputation."""
    return [
        (where, {k: v for k, v in definition.items() if k != "description"})
        for where, definition in live_definitions(attributes)
    ]


class MemoryRuleCatalog(RuleCatalog):
    """In memory, for tests of the API and the worker's logic without Redis."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.progress: dict[str, dict[str, Any]] = {}

    async def version(self) -> int:
        return self.catalog.version

    async def change(self, edit: Callable[[Catalog], Change]) -> Catalog:
        change = edit(self.catalog)
        if not change.empty:
            self.catalog = _applied(self.catalog, change)
        return self.catalog

    async def set_progress(self, attribute_id: str, progress: Mapping[str, Any]) -> None:
        self.progress[attribute_id] = dict(progress)

    async def snapshot(self) -> Catalog:
        return _with_progress(self.catalog, self.progress)


class RedisRuleCatalog(RuleCatalog):
    """A hash of attribute id -> JSON (`KeyLayout.computed_attributes`), the version
    (`KeyLayout.rules_version`) and the generations (`KeyLayout.generations`: JSON)."""

    def __init__(self, client: aioredis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.hash = keys.computed_attributes()
        self.version_key = keys.rules_version()
        self.progress_key = keys.backfill_progress()
        self.generations_key = keys.generations()
        #: on the spread layout, what raises every bucket's copy of the rules version
        #: after a change made here (`traitflow.spread_rules`)
        self.raiser: CopiesRaiser | None = None

    @classmethod
    def from_url(cls, url: Redis, prefix: str) -> RedisRuleCatalog:
        """`url`: settings, or a URL alone (`traitflow.redis_client`). From settings of
        the spread layout, a change also raises every bucket's copy of the version."""
        catalog = cls(async_client(url), KeyLayout(prefix))
        if isinstance(url, Settings) and url.redis_layout == "spread":
            catalog.raiser = CopiesRaiser.of(url, prefix, url.redis_buckets)
        return catalog

    async def version(self) -> int:
        return int(await self.client.get(self.version_key) or 0)

    async def snapshot(self) -> Catalog:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.hgetall(self.hash)
            pipe.get(self.generations_key)
            pipe.hgetall(self.progress_key)
            version, stored, generations, progress = await pipe.execute()
        return _with_progress(
            _decoded(version, stored, generations),
            {k.decode(): orjson.loads(v) for k, v in progress.items()},
        )

    async def set_progress(self, attribute_id: str, progress: Mapping[str, Any]) -> None:
        await self.client.hset(self.progress_key, attribute_id, orjson.dumps(dict(progress)))

    async def change(self, edit: Callable[[Catalog], Change]) -> Catalog:
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(self.version_key)
                catalog = _decoded(
                    await pipe.get(self.version_key),
                    await pipe.hgetall(self.hash),
                    await pipe.get(self.generations_key),
                )
                change = edit(catalog)
                if change.empty:
                    return catalog
                after = _applied(catalog, change)
                pipe.multi()  # type: ignore[no-untyped-call]
                if change.drop is not None:
                    pipe.hdel(self.hash, change.drop)
                for attribute in after.attributes:
                    # what the change made: `put`, or those a recomputation's end activated
                    if attribute.version == after.version:
                        pipe.hset(self.hash, attribute.id, orjson.dumps(attribute.as_json()))
                pipe.set(self.generations_key, orjson.dumps(_generations_json(after)))
                pipe.set(self.version_key, after.version)
                try:
                    await pipe.execute()
                except WatchError:
                    continue  # another change came first: check against it
                if self.raiser is not None:
                    await self.raiser.changed(after.version)
                return after

    async def close(self) -> None:
        await self.client.aclose()
        if self.raiser is not None:
            await self.raiser.close()


#: the progress field of the recomputation's backfill (beside attribute ids)
RECOMPUTATION = "recomputation"


def _with_progress(catalog: Catalog, progress: Mapping[str, Mapping[str, Any]]) -> Catalog:
    """`catalog` with each PROCESSING attribute's backfill progress, and the
    recomputation's."""
    attributes = tuple(
        replace(a, progress=progress[a.id])
        if a.status is Status.PROCESSING and a.id in progress
        else a
        for a in catalog.attributes
    )
    running = catalog.recomputation
    if running is not None and RECOMPUTATION in progress:
        running = replace(running, progress=progress[RECOMPUTATION])
    return replace(catalog, attributes=attributes, recomputation=running)


def _generations_json(catalog: Catalog) -> dict[str, Any]:
    running = catalog.recomputation
    return {
        "generation": catalog.generation,
        "recomputation": running.as_json() if running is not None else None,
        "horizons": dict(catalog.horizons),
        "recomputed": list(catalog.recomputed),
    }


def _decoded(
    version: bytes | str | None,
    stored: Mapping[bytes | str, bytes | str],
    generations: bytes | str | None = None,
) -> Catalog:
    attributes = [ManagedAttribute.from_json(orjson.loads(raw)) for raw in stored.values()]
    attributes.sort(key=lambda a: (a.created_ms, a.id))
    kept = orjson.loads(generations) if generations else {}
    running = kept.get("recomputation")
    return Catalog(
        int(version or 0),
        tuple(attributes),
        generation=int(kept.get("generation", 0)),
        recomputation=Recomputation.from_json(running) if running else None,
        horizons={k: int(v) for k, v in kept.get("horizons", {}).items()},
        recomputed=tuple(kept.get("recomputed", ())),
    )


@dataclass(frozen=True)
class RuleSource:
    """The rule file's text, read once, and what composing it with the catalog gives:
    the rules the workers compute (file attributes first, then the live managed ones)."""

    text: str
    path: str
    entities: Collection[str] | None = None
    #: attribute names the file declares (a managed attribute may not take one)
    names: frozenset[str] = field(default=frozenset())

    @classmethod
    def read(cls, path: str | Path, entities: Collection[str] | None = None) -> RuleSource:
        """The file at `path`; RuleFileError if it cannot be read or used."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = RuleProblem(str(path), None, None, f"cannot read: {exc}")
            raise RuleFileError([problem]) from None
        rules = parse_rules(text, str(path), entities)
        return cls(text, str(path), entities, frozenset(rules.names))

    def compose(
        self, attributes: Sequence[ManagedAttribute], generations: Generations = FIRST
    ) -> RuleSet:
        """The rules with the live ones of `attributes`, keeping the states of
        `generations`; RuleFileError names each problem with the attribute's
        `ca/attributes/{id}`."""
        managed = live_definitions(attributes)
        return parse_rules(self.text, self.path, self.entities, managed, generations)

    def check(self, attributes: Sequence[ManagedAttribute]) -> None:
        """Raise RuleFileError unless `attributes` compose with the file twice: as if
        every one that is not DISABLED were live (a DRAFT must be ready to activate),
        and as the workers compute them, the live ones alone. Both, because a live
        attribute that reads a DRAFT composes in the first and not in the second: no
        worker could switch to such a catalog, and every commit would wait for it."""
        trial = [
            a if a.status is not Status.DRAFT else replace(a, status=Status.ACTIVE)
            for a in attributes
            if a.status is not Status.DISABLED
        ]
        self.compose(trial)
        try:
            self.compose(attributes)
        except RuleFileError as exc:
            drafts = sorted(a.name for a in attributes if a.status is Status.DRAFT)
            hint = f" (not computed while DRAFT: {', '.join(drafts)})" if drafts else ""
            raise RuleFileError(
                [replace(p, problem=p.problem + hint) for p in exc.problems]
            ) from None
