"""Which buckets' outbox streams a relay round reads on the spread layout
(`traitflow.spread_outbox.OutboxBuckets`): every one at a partition's first round and
every `FULL_ROUND_S`, else those written since and those found holding messages."""

from __future__ import annotations

from traitflow.spread_outbox import FULL_ROUND_S, OutboxBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_partitions_first_round_reads_every_bucket_then_only_those_holding_messages() -> None:
    clock = Clock()
    buckets = OutboxBuckets(8, clock)

    read, began = buckets.to_read("events/0")
    assert read == list(range(8))
    buckets.found("events/0", read, [b for b in read if b not in (2, 5)], began)

    assert buckets.to_read("events/0")[0] == [2, 5]
    assert buckets.to_read("events/1")[0] == list(range(8)), "each partition starts whole"


def test_a_bucket_written_is_read_until_found_empty() -> None:
    clock = Clock()
    buckets = OutboxBuckets(8, clock)
    read, began = buckets.to_read("events/0")
    buckets.found("events/0", read, read, began)
    assert buckets.to_read("events/0")[0] == []

    buckets.written("events/0", 6)
    read, began = buckets.to_read("events/0")
    assert read == [6]
    buckets.found("events/0", read, [], began)  # not relayed yet: still holding
    read, began = buckets.to_read("events/0")
    assert read == [6]
    buckets.found("events/0", read, [6], began)
    assert buckets.to_read("events/0")[0] == []


def test_a_write_noted_during_a_round_that_found_its_bucket_empty_keeps_it() -> None:
    """The round's read may have come before the write landed: the bucket stays."""
    buckets = OutboxBuckets(8, Clock())
    read, began = buckets.to_read("events/0")
    buckets.written("events/0", 3)  # committed while the round's XRANGEs were out
    buckets.found("events/0", read, read, began)

    assert buckets.to_read("events/0")[0] == [3]


def test_every_bucket_is_read_again_after_the_full_round_interval_and_after_forget() -> None:
    clock = Clock()
    buckets = OutboxBuckets(4, clock)
    read, began = buckets.to_read("events/0")
    buckets.found("events/0", read, read, began)

    clock.now += FULL_ROUND_S - 0.01
    assert buckets.to_read("events/0")[0] == []
    clock.now += 0.01
    assert buckets.to_read("events/0")[0] == [0, 1, 2, 3], "another process's writes"

    buckets.found("events/0", [0, 1, 2, 3], [0, 1, 2, 3], 0)
    buckets.written("events/0", 1)
    buckets.forget()
    assert buckets.to_read("events/0")[0] == [0, 1, 2, 3], "partitions moved"
