"""A backfill's dry run (`traitflow rules backfill --dry-run`): what it would make of an
attribute for a sample of profiles, computed with the worker's own parts, from outside
the workers, with nothing written."""

from __future__ import annotations

from streams.app import redis_profiles, worker_processor
from streams.backfill import Backfill, Preview
from streams.records import ListDeadLetters
from streams.spread_worker import spread_profiles
from traitflow.config import Settings
from traitflow.rule_catalog import RedisRuleCatalog, RuleSource


async def dry_run(
    settings: Settings, source: RuleSource, attribute_id: str, sample: int
) -> list[Preview]:
    """`Backfill.preview` of an attribute made through the API, from outside the workers
    (`traitflow rules backfill --dry-run`): nothing is written."""
    profiles = redis_profiles(settings)  # on the spread layout: what is not a profile's
    spread = spread_profiles(settings)
    catalog = RedisRuleCatalog(profiles.client, profiles.keys)
    try:
        snapshot = await catalog.snapshot()
        attribute = snapshot.get(attribute_id)
        if attribute is None:
            raise LookupError(f"computed attribute {attribute_id!r} not found")
        rules = source.compose(snapshot.attributes, snapshot.generations)
        processor = worker_processor(
            settings, rules, profiles, store=spread or profiles, dead_letters=ListDeadLetters()
        )
        backfill = Backfill(settings, processor, catalog, profiles.client, source, spread=spread)
        return await backfill.preview(attribute, sample)
    finally:
        if spread is not None:
            await spread.close()
        await profiles.close()
