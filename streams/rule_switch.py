"""Running workers switch to a new rules version without a restart.

Correctness does not depend on timing: every commit is made at the rules version its
batch was computed with, or refused (`traitflow.store.RulesChanged`, checked in the
commit's own transaction); the worker then reads the current rules and computes the
batch again. So once the version changes, no profile is written under the old rules
by any worker, and every view says the version that made it (`rules_version`).
Promptness is the timer's: each worker asks the version every `rules_poll_s`, so an
idle one switches too, and its gauge says which version it runs.

Rules that cannot be composed (a rule file changed under attributes made through the
API) stop the switch, not the data: the worker keeps refusing to commit under the
old version, its batches are retried and its lag grows, and it logs what is wrong
until the attribute or the file is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from attributes.ruleset import RuleSet
from streams.metrics import WorkerMetrics
from streams.processor import BatchProcessor
from traitflow.rule_catalog import RuleCatalog, RuleSource

log = logging.getLogger(__name__)


class RuleSwitch:
    """The rules a worker should compute with: the rule file and the catalog's live
    attributes, at the catalog's version. `propagate`: what must be done at a version
    before anything is committed at it (on the spread layout, every bucket's copy of
    the version raised: `traitflow.spread_rules`)."""

    def __init__(
        self,
        catalog: RuleCatalog,
        source: RuleSource,
        propagate: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.catalog = catalog
        self.source = source
        self.propagate = propagate

    async def current(self) -> tuple[RuleSet, int]:
        """The current rules and their version; RuleFileError if they do not compose
        (nothing propagated then)."""
        catalog = await self.catalog.snapshot()
        rules = self.source.compose(catalog.attributes, catalog.generations)
        if self.propagate is not None:
            await self.propagate(catalog.version)
        return rules, catalog.version

    async def poll(self, processor: BatchProcessor, metrics: WorkerMetrics) -> None:
        """Switch `processor` if the version moved (between its batches)."""
        if await self.catalog.version() != processor.rules_version:
            async with processor.lock:
                rules, version = await self.current()
                if version != processor.rules_version:
                    processor.switch(rules, version)
                    await processor.note_positions()
        metrics.rules_version.set(processor.rules_version)
