"""A no-op Faust consumer against the embedded broker: stock faust-streaming vs our patch.

    python -m bench.faust_noop --events 200000 [--shares]

Publishes N small events to a fresh 8-partition topic, then runs one Faust worker per
configuration (a subprocess each: the patch changes Faust classes) that only counts:
an agent iterating the stream (`stream`) or `take_events` batches, and a batch topic
(`batch`, the worker's own delivery path: this row is the worker's Kafka consumption
rate). Prints events/s from the first to the last event, the worker's CPU use, and the
time from worker start to the first event. This isolates Faust's own per-event cost
from traitflow's (compare bench.pipeline and bench.engine). `--shares` adds a run of
the patch without each of its optional parts: what each one is worth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any

from traitflow.config import Settings
from traitflow.services import embedded_services
from traitflow.topics import ensure_topics, publish_lines

MODES = ("stream", "take_events", "batch")


def run_worker(topic: str, events: int, mode: str, patched: str, settings: Settings) -> None:
    """In the child: run a Faust worker until `events` were seen, print one JSON line.
    `patched`: "0" stock, "1" the whole patch, "1-<part>" the patch without that part."""
    import faust

    from streams import fastfaust

    if patched != "0":
        fastfaust.install(without=patched.split("-")[1:])
    started = time.perf_counter()
    session, rebalance, heartbeat = settings.group_timeouts
    app = faust.App(
        f"noop-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_rebalance_timeout=rebalance,
        broker_heartbeat_interval=heartbeat,
        datadir=str(settings.home / "faust-noop"),
    )
    source = app.topic(topic, value_type=bytes)
    seen: dict[str, Any] = {"n": 0}

    def count(n: int) -> None:
        if not seen["n"]:
            seen["first"], seen["cpu"] = time.perf_counter(), time.process_time()
        seen["n"] += n
        if seen["n"] >= events:
            span = time.perf_counter() - seen["first"]
            result = {
                "events_per_s": round(events / span),
                "cpu_pct": round(100 * (time.process_time() - seen["cpu"]) / span),
                "start_to_first_s": round(seen["first"] - started, 2),
            }
            print(json.dumps(result), flush=True)
            os._exit(0)

    async def count_batch(messages: Any) -> None:
        count(len(messages))

    if mode == "batch":
        from streams.fastfaust import batch_subscribe

        batch_subscribe(app, source, count_batch, max_size=settings.batch_size)
        faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
        return

    @app.agent(source)
    async def noop(stream: Any) -> None:
        if mode == "stream":
            async for _ in stream:
                count(1)
        else:
            async for batch in stream.take_events(1000, 0.05):
                count(len(batch))

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--shares", action="store_true", help="also the patch without each optional part"
    )
    parser.add_argument("--child", nargs=3, metavar=("TOPIC", "MODE", "PATCHED"))
    args = parser.parse_args()
    settings = Settings.from_environ(os.environ)
    if args.child:
        topic, mode, patched = args.child
        sys.argv = [sys.argv[0], "worker"]  # what Faust's command line expects
        run_worker(topic, args.events, mode, patched, settings)
        return

    for service in embedded_services(settings):
        service.start()
    topic = f"noop-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(settings, [topic]))
    lines = (
        b'{"type":"track","event":"x","userId":"u%d"}' % (i % 10_000) for i in range(args.events)
    )
    asyncio.run(publish_lines(settings, topic, lines))
    from streams.fastfaust import OPTIONAL

    runs = [("0", mode) for mode in MODES if mode != "batch"]  # batch topics need the patch
    runs += [("1", mode) for mode in MODES]
    if args.shares:  # each optional part's share: the patch without it
        runs += [(f"1-{part}", mode) for part in OPTIONAL for mode in ("stream", "batch")]
    for patched, mode in runs:
        child = [sys.executable, "-m", "bench.faust_noop", "--events", str(args.events)]
        done = subprocess.run(
            [*child, "--child", topic, mode, patched],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        # Faust redirects stdout into its log (stderr): the result line has a log prefix
        found = re.search(r'\{"events_per_s".*\}', done.stdout + done.stderr)
        if found is None:
            sys.exit(f"worker failed:\n{done.stdout}\n{done.stderr}")
        result = json.loads(found[0])
        name = {"0": "stock", "1": "patched"}.get(patched, f"without {patched[2:]}")
        print(
            f"{name:<20} {mode:<12} {result['events_per_s']:>8,} events/s  "
            f"CPU {result['cpu_pct']:>3}%  start->first event {result['start_to_first_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
