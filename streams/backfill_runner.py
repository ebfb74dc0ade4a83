"""Who runs backfills (`streams.backfill`), and what they need from the live workers.

`BackfillRunner`: one process at a time (the backfill process, `streams.
backfill_process`, or a worker with TRAITFLOW_BACKFILL_PROCESS off) runs the backfill
of a PROCESSING attribute, under a lease in Redis that it renews while it works and that
expires if it dies (then another starts the backfill again). `start_notes`: where each partition's
computing at a rules version began, noted before the first commit at it, which is
where a backfill of an attribute of that version stops reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from attributes.catalog import ManagedAttribute, Status
from streams.backfill import Backfill
from streams.rule_versions import Also, NoteStart
from streams.start_notes import NOTE, note_args
from traitflow.key_layout import KeyLayout
from traitflow.rule_catalog import RECOMPUTATION, Catalog, Change

log = logging.getLogger(__name__)

#: Seconds between looks for attributes to backfill, by a worker (`run_in_worker`) or
#: by the backfill process (`streams.backfill_process`).
BACKFILL_TICK_S = 2.0


class BackfillRunner:
    """Runs the backfills of PROCESSING attributes, one at a time across the workers:
    each tick, a worker that holds no backfill tries to take the lease (`tf:bf:lock`),
    and keeps it while it works."""

    def __init__(self, backfill: Backfill, lease_s: float = 30.0, retry_s: float = 60.0) -> None:
        self.backfill = backfill
        self.lease_ms = int(lease_s * 1000)
        self.task: asyncio.Task[None] | None = None
        #: how long a backfill that failed waits before it is tried again
        self.retry_s = retry_s
        #: attribute id (or RECOMPUTATION) -> (the version whose backfill failed, when
        #: to try it again)
        self.failed: dict[str, tuple[int, float]] = {}

    async def tick(self) -> None:
        if self.task is not None and not self.task.done():
            return
        backfill = self.backfill
        catalog = await backfill.catalog.snapshot()
        now = time.monotonic()
        running = catalog.recomputation
        # first: once done, it makes the PROCESSING attributes ACTIVE as well
        if (
            running is not None
            and running.version <= backfill.processor.rules_version
            and not self._resting(RECOMPUTATION, running.version, now)
        ):
            await self._start(self._recompute(catalog))
            return
        # one that failed goes after the others (until its retry, or a new version of
        # it): one attribute whose backfill fails every time must not hold back the rest
        waiting = [
            a
            for a in catalog.attributes
            if a.status is Status.PROCESSING
            and a.version <= backfill.processor.rules_version
            and not self._resting(a.id, a.version, now)
        ]
        if waiting:
            await self._start(self._attribute(waiting[0], catalog))

    def _resting(self, what: str, version: int, now: float) -> bool:
        """Whether this version of `what` failed to backfill, too lately to retry."""
        failed = self.failed.get(what)
        return failed is not None and failed[0] == version and failed[1] > now

    async def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as the task, if this runner takes the lease (else another runs one)."""
        token = uuid.uuid4().hex
        lock = self.backfill.keys.backfill_lock()
        if not await self.backfill.client.set(lock, token, nx=True, px=self.lease_ms):
            work.close()
            return
        self.task = asyncio.create_task(self._leased(work, token))

    async def _attribute(self, attribute: ManagedAttribute, catalog: Catalog) -> None:
        backfill = self.backfill
        log.info("backfilling %s (%s)", attribute.name, attribute.id)
        try:
            if not await backfill.run(attribute, catalog):
                log.info("%s changed while backfilled: its new definition is next", attribute.name)
                return
            await backfill.catalog.change(activated(attribute, int(time.time() * 1000)))
        except Exception:
            self._failed(attribute.id, attribute.version, f"backfill of {attribute.name}")
            return
        log.info("backfilled %s: ACTIVE", attribute.name)

    async def _recompute(self, catalog: Catalog) -> None:
        """Compute the recomputation's generation and have it served, then render every
        view again and have it done (`attributes.recomputation`); either part is run
        again by the next runner if this one dies."""
        running = catalog.recomputation
        assert running is not None
        backfill, version = self.backfill, running.version
        try:
            if not running.rendering:
                jobs = ", ".join(running.jobs)
                log.info("recomputing every attribute (generation %d) for %s", version, jobs)
                if not await backfill.recompute(catalog):
                    log.info("the attributes changed while recomputed: it starts again")
                    return
                running = (await backfill.catalog.change(recomputed(version))).recomputation
                if running is None or running.version != version or not running.rendering:
                    return  # it started again meanwhile
                log.info("generation %d is served: rendering every profile again", version)
            await backfill.render()
            await backfill.catalog.change(recomputed(version))
        except Exception:
            self._failed(RECOMPUTATION, version, "recomputation")
            return
        log.info("recomputed every attribute: every view shows generation %d", version)

    def _failed(self, what: str, version: int, named: str) -> None:
        self.failed[what] = (version, time.monotonic() + self.retry_s)
        log.exception(
            "%s failed; it is tried again in %.0f s, other backfills first", named, self.retry_s
        )

    async def _leased(self, work: Coroutine[Any, Any, None], token: str) -> None:
        backfill = self.backfill
        lock = backfill.keys.backfill_lock()
        renew = asyncio.create_task(self._renew(lock, token))
        try:
            await work
        finally:
            renew.cancel()
            if await backfill.client.get(lock) == token.encode():
                await backfill.client.delete(lock)

    async def _renew(self, lock: str, token: str) -> None:
        client = self.backfill.client
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if await client.get(lock) == token.encode():
                await client.pexpire(lock, self.lease_ms)


def run_in_worker(app: Any, runner: BackfillRunner) -> None:
    """With TRAITFLOW_BACKFILL_PROCESS off: the worker `app` (Faust's) looks for
    backfills to run every `BACKFILL_TICK_S`, between its batches."""

    @app.timer(interval=BACKFILL_TICK_S)  # type: ignore[untyped-decorator]
    async def run_backfills() -> None:
        try:
            await runner.tick()
        except Exception as exc:  # Redis away: the next tick asks again
            log.warning("backfills not looked for (%r)", exc)


def activated(attribute: ManagedAttribute, now_ms: int) -> Callable[[Catalog], Change]:
    """The catalog edit that makes a backfilled attribute ACTIVE, unless it changed
    meanwhile (then nothing: its new definition has a backfill of its own)."""

    def edit(catalog: Catalog) -> Change:
        current = catalog.get(attribute.id)
        if current is None or current.status is not Status.PROCESSING:
            return Change()
        if current.version != attribute.version:
            return Change()
        return Change(put=replace(current, status=Status.ACTIVE, updated_ms=now_ms))

    return edit


def recomputed(version: int) -> Callable[[Catalog], Change]:
    """The catalog edit that moves the recomputation that started at `version` on (to
    rendering, then done), unless it started again meanwhile (then nothing: the new
    one is next)."""

    def edit(catalog: Catalog) -> Change:
        running = catalog.recomputation
        if running is None or running.version != version:
            return Change()
        return Change(recomputed=version)

    return edit


def start_notes(client: aioredis.Redis, keys: KeyLayout) -> NoteStart:
    """`BatchProcessor.note_start` on Redis (`streams.start_notes.NOTE`, one script per
    partition, in one round trip): the first note of a (partition, version) stays, the
    offset before which that partition was computed with older rules; beside it, field
    `"{version}:{entity}:{older}"`, the offsets past it that were committed at the older
    version all the same: by the batch before it switched (`Also`), or by another
    worker before this one's start note took effect (redelivered records found already
    applied), comma separated. Returns the partitions whose start note is this call's."""

    async def note(
        version: int, firsts: Mapping[str, int], also: Also, redelivered: Also
    ) -> Collection[str]:
        partitions = list({*firsts, *redelivered})
        async with client.pipeline(transaction=False) as pipe:
            for partition in partitions:
                args = note_args(
                    version,
                    firsts.get(partition),
                    also.get(partition, {}),
                    redelivered.get(partition, {}),
                )
                pipe.eval(NOTE, 1, keys.rules_starts(partition), *args)
            replies = await pipe.execute()
        took = zip(partitions, replies, strict=True)
        return {p for p, reply in took if p in firsts and int(reply)}

    return note
