"""A worker that kills itself (SIGKILL) between two steps of its first commit that
claims keys (`traitflow.spread_claims`): run as a process by
`test_redis_cluster_spread_kill.py`, so that what it leaves is what a worker killed
there leaves: nothing cleaned up, no `finally`, no connection closed politely.

Arguments: a JSON file with the cluster's URL, the key prefix, the buckets, the claims'
lease (ms), the step to die after ("claimed", "committed", "finalized"), the partition,
its first offset and the events of the batch.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from attributes.rules import load_rules
from attributes.stitching import TRUST_ALL
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.spread_claims import Op
from traitflow.spread_plan import BucketCommit, SpreadCommit
from traitflow.spread_protocol import SpreadProtocol
from traitflow.spread_store import SpreadProfileStore

#: the steps a commit that claims keys goes through, in order ("finalizing": half of
#: its finalize steps run)
STEPS = ("claimed", "committed", "finalizing", "finalized")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DyingProtocol(SpreadProtocol):
    """Dies after `step` of the first commit that claims keys."""

    def __init__(self, step: str, *args: Any) -> None:
        super().__init__(*args)
        self.step = step
        self.committed = False

    async def commit_buckets(self, spread: SpreadCommit) -> dict[int, list[bytes | None]]:
        if spread.claims and self.step == "claimed":
            die()
        refused = await super().commit_buckets(spread)
        if spread.claims and self.step == "committed":
            die()
        self.committed = self.committed or bool(spread.claims)
        return refused

    async def finalize(self, ops: Iterable[Op]) -> None:
        steps = list(ops)
        if self.committed and self.step == "finalizing":
            await super().finalize(steps[: len(steps) // 2])
            die()
        await super().finalize(steps)

    def drop_intents(self, commit: str, parts: Iterable[BucketCommit]) -> None:
        parts = list(parts)
        if self.step == "finalized" and any(op[0] == "POINT" for p in parts for op in p.forward):
            die()
        super().drop_intents(commit, parts)


async def run(spec: dict[str, Any]) -> None:
    settings = Settings(
        redis_url=spec["url"],
        redis_cluster=True,
        redis_layout="spread",
        redis_buckets=spec["buckets"],
        key_prefix=spec["prefix"],
    )
    store = SpreadProfileStore.from_url(
        settings, settings.key_prefix, spec["buckets"], lease_ms=spec["lease_ms"]
    )
    store.protocol = DyingProtocol(spec["step"], store.client, store.layout, store.clock)
    processor = BatchProcessor(load_rules(spec["rules"]), store, ListDeadLetters(), trust=TRUST_ALL)
    first = spec["offset"]
    records = [
        Record("events", spec["partition"], first + i, orjson.dumps(e), 0)
        for i, e in enumerate(spec["events"])
    ]
    await processor.process(records)


if __name__ == "__main__":
    faulthandler.dump_traceback_later(30, exit=True)  # a hang shows where, and ends
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(run(orjson.loads(Path(sys.argv[1]).read_bytes())))
    sys.exit(3)  # it never claimed a key: the test's batch was not the one it needs
