"""`traitflow backfills`: backfills (`streams.backfill`) in a process of their own.

Why: a backfill computing in a worker's process shares that worker's event loop with
its live batches, and live latency pays for it even in short slices. With
`TRAITFLOW_BACKFILL_PROCESS` on, the supervisor of `traitflow worker` starts this
process beside the workers (`traitflow.supervisor`), and the workers run no backfills:
the operating system shares the cores between the two, this one at a lower priority
(`NICE`), and no live worker's event loop ever computes history.

It holds no partitions and consumes nothing for the group. It builds the processor a
worker builds (`streams.app.worker_processor`, same rules at the same version, followed
through `streams.rule_switch` as a worker follows them) and runs `BackfillRunner.tick`
every `BACKFILL_TICK_S`: the lease in Redis still lets one backfill run at a time, when
several hosts run one of these each.

Correctness across processes rests on what already makes several workers safe: the join
(`streams.backfill.fold`) commits only if each profile is still at the version it read
and at the rules version it computed with, and reads Redis (this process keeps no cache
of states). A live worker whose cached state the join changed finds a `Conflict` at its
next commit of that profile, drops the stale state and computes those events again on
the stored one; a join that finds a live commit did the same, on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable

from attributes.ruleset import RuleSet
from streams.app import redis_profiles, worker_processor
from streams.backfill import Backfill
from streams.backfill_runner import BACKFILL_TICK_S, BackfillRunner
from streams.metrics import WorkerMetrics
from streams.records import ListDeadLetters
from streams.rule_switch import RuleSwitch
from streams.spread_worker import spread_profiles
from streams.worker_rounds import TRANSIENT
from traitflow.config import Settings
from traitflow.rule_catalog import RedisRuleCatalog, RuleSource

log = logging.getLogger(__name__)

#: how much lower the backfill process's CPU priority is than the workers' (`nice`): on
#: cores they share, the kernel runs live batches first, as the lock does in a worker
NICE = 10


async def run_backfills(
    settings: Settings,
    source: RuleSource,
    rules: RuleSet,
    rules_version: int,
    stopping: asyncio.Event,
) -> None:
    """Follow the rules version and run the backfills of PROCESSING attributes until
    `stopping` is set; a backfill in progress is then cancelled and its lease given
    back, so that the next process (a restart) takes it at once."""
    profiles = redis_profiles(settings)  # on the spread layout: what is not a profile's
    spread = spread_profiles(settings)
    # no cache in front of Redis: every join reads what the live workers committed
    processor = worker_processor(
        settings, rules, profiles, store=spread or profiles, dead_letters=ListDeadLetters()
    )
    catalog = RedisRuleCatalog(profiles.client, profiles.keys)
    switch = RuleSwitch(catalog, source, spread.raise_rules if spread else None)
    processor.reload = switch.current
    if rules_version:
        processor.switch(rules, rules_version)
    backfill = Backfill(settings, processor, catalog, profiles.client, source, spread=spread)
    runner = BackfillRunner(backfill)
    metrics = WorkerMetrics()  # not served: `poll` keeps its rules version
    log.info("backfill process: rules version %d", processor.rules_version)
    loop = asyncio.get_running_loop()
    next_poll = next_tick = loop.time()
    try:
        while not stopping.is_set():
            if loop.time() >= next_poll:
                next_poll = loop.time() + settings.rules_poll_s
                await _logged(switch.poll(processor, metrics), "rules not switched")
            if loop.time() >= next_tick:
                next_tick = loop.time() + BACKFILL_TICK_S
                await _logged(runner.tick(), "backfills not looked for")
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, min(next_poll, next_tick) - loop.time())
                await asyncio.wait_for(stopping.wait(), wait)
    finally:
        task = runner.task
        if task is not None and not task.done():
            log.info("stopping: the backfill in progress starts again in the next process")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if spread is not None:
            await spread.close()
        await profiles.close()


async def _logged(step: Awaitable[None], what: str) -> None:
    """Await `step`; a failure is logged and the next round tries again (Redis away)."""
    try:
        await step
    except Exception as exc:
        transient = isinstance(exc, TRANSIENT)
        log.log(logging.WARNING if transient else logging.ERROR, "%s (%r)", what, exc)


def main(settings: Settings, source: RuleSource, rules: RuleSet, rules_version: int) -> None:
    """The process: until SIGTERM or SIGINT (the supervisor passes its own on), at a
    lower CPU priority than the workers."""
    os.nice(NICE)

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await run_backfills(settings, source, rules, rules_version, stopping)

    asyncio.run(run())
