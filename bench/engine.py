"""Rule-engine benchmark: the batch processor alone, in memory, no broker and no Redis.

    python -m bench.engine --events 200000 --users 10000 --batch 2000 [--rules FILE] [--announce]
        [--recomputing]

The per-event cost of decoding, applying every rule, rendering and encoding the
profiles of a batch, with the in-memory store behind the worker's state cache and the
worker's garbage-collector settings and entities (as in the worker: owned profiles are
not decoded again; every event is offered to users and accounts): the ceiling the
worker could reach if Kafka and Redis cost nothing. Best of --repeat runs; the CPU
time per event (the least of the runs) moves less than the rate on a shared machine.

Audience enters and exits are evaluated with every write, as in the worker, but not
announced unless `--announce` is given: then each write also carries its `Audience
Entered` / `Audience Exited` messages, built as the worker builds them (the in-memory
store keeps them; nothing is produced). With and without it, the difference is the
cost of building the messages, apart from evaluating the membership; what the worker
pays on top (the outbox in the commit, the relay's produce) only `bench.pipeline`
shows.

With `--recomputing`, the rules compute every attribute twice, as while a source delete
job's recomputation runs (`attributes.recomputation`): the served states and the new
generation's beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from attributes.identities import IdentityRules
from attributes.rules import FIRST, Generations, parse_rules
from attributes.stitching import TRUST_ALL
from bench.pipeline import make_events
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.runtime import tune_gc
from traitflow.state_cache import CachedProfileStore

ROOT = Path(__file__).resolve().parents[1]


async def run(
    records: list[Record], batch: int, rules_text: str, *, announce: bool, recomputing: bool
) -> tuple[float, float]:
    """(seconds, CPU seconds) of one run."""
    settings = Settings.from_environ(os.environ)  # the benchmark's entry point
    entities = {entity: IdentityRules(spec) for entity, spec in settings.entities.items()}
    generations = Generations(recomputing=1) if recomputing else FIRST
    rules = parse_rules(rules_text, "rules", entities, (), generations)
    store = CachedProfileStore(MemoryProfileStore(), max_profiles=100_000)
    processor = BatchProcessor(
        rules,
        store,
        ListDeadLetters(),
        identities=entities,
        audience_topic=settings.audience_changes_topic if announce else None,
        # its stream logs devices in to users, as a backend's does: a source trusted
        # to link (README, "Trusted links"), or every user would stay anonymous
        trust=TRUST_ALL,
    )
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(records), batch):
        await processor.process(records[start : start + batch])
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", type=Path, default=ROOT / "examples" / "rules.yaml")
    parser.add_argument(
        "--announce",
        action="store_true",
        help="build each audience enter and exit message, as the worker does",
    )
    parser.add_argument(
        "--recomputing",
        action="store_true",
        help="compute every attribute twice, as while a source delete job recomputes them",
    )
    args = parser.parse_args()
    events, _ = make_events(args.events, args.users, seed=7)
    # one user's events stay in one partition, as with keyed producers
    records = [
        Record("bench", hash(key) % args.partitions, offset, value, 0)
        for offset, (key, value) in enumerate(events)
    ]
    tune_gc()
    runs = [
        asyncio.run(
            run(
                records,
                args.batch,
                args.rules.read_text(),
                announce=args.announce,
                recomputing=args.recomputing,
            )
        )
        for _ in range(args.repeat)
    ]
    best = min(seconds for seconds, _ in runs)
    cpu = min(cpu for _, cpu in runs)
    print(
        f"engine  {args.events / best:,.0f} events/s  ({1e6 * best / args.events:.1f} us/event, "
        f"CPU {1e6 * cpu / args.events:.1f} us/event, "
        f"{args.events} events, {args.users} users, batches of {args.batch}"
        f"{', announcing audience changes' if args.announce else ''}"
        f"{', recomputing' if args.recomputing else ''})"
    )


if __name__ == "__main__":
    main()
