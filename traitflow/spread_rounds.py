"""Which buckets a worker's timer rounds read, on the spread layout.

Two rounds of the worker read a copy per bucket of something kept per input partition:
the outbox relay (every `TRAITFLOW_OUTBOX_INTERVAL_S`, `traitflow.spread_outbox`) and
the expiry round (every `TRAITFLOW_EXPIRY_INTERVAL_S`, `SpreadProfileStore.due`).
Reading all 1,024 copies each time, when nearly all have nothing to do, cost a worker
several ms a round per owned partition (`bench/README.md`).

The owner of a partition makes nearly every write to those copies, so it knows when
each is next worth reading: a bucket whose stream holds messages, now; a bucket whose
earliest expiry is at t, at t; an empty one, never, until a commit of its own writes
there. Others write there too (a backfill's render, a source job: under the profile's
partition, not theirs), and a partition moved here holds what its last owner left. So
a partition's first round, the first after partitions move, and one every
`FULL_ROUND_S` read every bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

#: seconds between rounds that read every bucket of a partition: the longest a message
#: or an expiry written by a process that does not own the partition waits
FULL_ROUND_S = 5.0

#: a bucket with nothing to read
NEVER = math.inf


class BucketRounds:
    """Per partition, from when each bucket's copy is worth reading (a time on the
    caller's scale: epoch ms for expiries, 0 for "now" for the outbox)."""

    def __init__(self, buckets: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = buckets
        #: for full rounds only (seconds, any epoch)
        self.clock = clock
        self._next: dict[str, dict[int, float]] = {}
        self._full_at: dict[str, float] = {}
        #: (partition, bucket) -> (the count of notes at its last, its earliest time):
        #: what a round that began before that note must not forget
        self._noted: dict[tuple[str, int], tuple[int, float]] = {}
        self._notes = 0

    def note(self, partition: str, bucket: int, at: float = 0.0) -> None:
        """A commit wrote to `bucket`'s copy something worth reading from `at`."""
        self._notes += 1
        earlier = self._noted.get((partition, bucket), (0, NEVER))[1]
        self._noted[(partition, bucket)] = (self._notes, min(earlier, at))
        times = self._next.setdefault(partition, {})
        times[bucket] = min(times.get(bucket, NEVER), at)

    def forget(self) -> None:
        """Partitions moved: what another owner wrote meanwhile is not known here, so
        the next round of each partition reads every bucket."""
        self._full_at.clear()
        self._next.clear()

    def to_read(self, partition: str, now: float = 0.0) -> tuple[list[int], int]:
        """The buckets a round at `now` reads, ascending, and the count of notes it
        began at (for `found`)."""
        started = self.clock()
        full_at = self._full_at.get(partition)
        if full_at is None or started - full_at >= FULL_ROUND_S:
            self._full_at[partition] = started
            return list(range(self.buckets)), self._notes
        times = self._next.get(partition, {})
        return sorted(b for b, at in times.items() if at <= now), self._notes

    def found(self, partition: str, nexts: Mapping[int, float], began: int) -> None:
        """After a round that began at `began` notes: when each bucket it read is next
        worth reading (NEVER: it holds nothing), unless noted earlier since."""
        times = self._next.setdefault(partition, {})
        for bucket, at in nexts.items():
            noted = self._noted.get((partition, bucket))
            if noted is not None:
                if noted[0] > began:  # written after the read may have been made
                    at = min(at, noted[1])
                else:
                    del self._noted[(partition, bucket)]
            if at == NEVER:
                times.pop(bucket, None)
            else:
                times[bucket] = at

    def tracked(self, partition: str) -> Iterable[int]:
        """The buckets with something to read at some time (for tests and metrics)."""
        return sorted(self._next.get(partition, {}))
