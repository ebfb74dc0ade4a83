"""Rule-engine benchmark: the batch processor alone, in memory, no broker and no Redis.

    python -m bench.engine --events 200000 --users 10000 --batch 2000 [--rules FILE]

The per-event cost of decoding, applying every rule, rendering and encoding the
profiles of a batch, with the in-memory store behind the worker's state cache and the
worker's garbage-collector settings and entities (as in the worker: owned profiles are
not decoded again; every event is offered to users and accounts): the ceiling the
worker could reach if Kafka and Redis cost nothing. Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from attributes.identities import IdentityRules
from attributes.rules import load_rules
from bench.pipeline import make_events
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.runtime import tune_gc
from traitflow.state_cache import CachedProfileStore

ROOT = Path(__file__).resolve().parents[1]


async def run(records: list[Record], batch: int, rules_path: Path) -> float:
    declared = Settings.from_environ(os.environ).entities  # the benchmark's entry point
    entities = {entity: IdentityRules(spec) for entity, spec in declared.items()}
    rules = load_rules(rules_path, entities)
    store = CachedProfileStore(MemoryProfileStore(), max_profiles=100_000)
    processor = BatchProcessor(rules, store, ListDeadLetters(), identities=entities)
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        await processor.process(records[start : start + batch])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", type=Path, default=ROOT / "examples" / "rules.yaml")
    args = parser.parse_args()
    events, _ = make_events(args.events, args.users, seed=7)
    # one user's events stay in one partition, as with keyed producers
    records = [
        Record("bench", hash(key) % args.partitions, offset, value, 0)
        for offset, (key, value) in enumerate(events)
    ]
    tune_gc()
    best = min(asyncio.run(run(records, args.batch, args.rules)) for _ in range(args.repeat))
    print(
        f"engine  {args.events / best:,.0f} events/s  ({1e6 * best / args.events:.1f} us/event, "
        f"{args.events} events, {args.users} users, batches of {args.batch})"
    )


if __name__ == "__main__":
    main()
