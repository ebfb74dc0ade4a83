"""The batch oracle: what the pipeline must serve, computed in memory from the same events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore


def expected_view(settings: Settings, events: Sequence[dict[str, Any]], user: str) -> Any:
    async def run() -> Any:
        store = MemoryProfileStore()
        # every event links, as the tests' workers' trusted source's do (conftest's
        # `source_trust`); a processor not told so would link nothing
        processor = BatchProcessor(
            load_rules(settings.rules_path), store, ListDeadLetters(), trust=TRUST_ALL
        )
        records = [Record("oracle", 0, i, orjson.dumps(e), 0) for i, e in enumerate(events)]
        await processor.process(records)
        view = await store.read_view("user", "user_id", user)
        assert view is not None
        return orjson.loads(view)

    return asyncio.run(run())
