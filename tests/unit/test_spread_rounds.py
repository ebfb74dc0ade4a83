"""Which buckets a worker's timer round reads on the spread layout
(`traitflow.spread_rounds.BucketRounds`): every one at a partition's first round, after
`forget` and every `FULL_ROUND_S`; else those worth reading by then: written since, found
holding messages, or with an expiry due."""

from __future__ import annotations

from traitflow.spread_rounds import FULL_ROUND_S, NEVER, BucketRounds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_partitions_first_round_reads_every_bucket_then_only_those_worth_reading() -> None:
    rounds = BucketRounds(8, Clock())

    read, began = rounds.to_read("events/0")
    assert read == list(range(8))
    rounds.found("events/0", {b: 0.0 if b in (2, 5) else NEVER for b in read}, began)

    assert rounds.to_read("events/0")[0] == [2, 5]
    assert rounds.to_read("events/1")[0] == list(range(8)), "each partition starts whole"


def test_a_bucket_written_is_read_until_found_empty() -> None:
    rounds = BucketRounds(8, Clock())
    read, began = rounds.to_read("events/0")
    rounds.found("events/0", dict.fromkeys(read, NEVER), began)
    assert rounds.to_read("events/0")[0] == []

    rounds.note("events/0", 6)
    read, began = rounds.to_read("events/0")
    assert read == [6]
    rounds.found("events/0", {6: 0.0}, began)  # not relayed yet: still holding
    read, began = rounds.to_read("events/0")
    assert read == [6]
    rounds.found("events/0", {6: NEVER}, began)
    assert rounds.to_read("events/0")[0] == []


def test_a_write_noted_during_a_round_that_found_its_bucket_empty_keeps_it() -> None:
    """The round's read may have come before the write landed: the bucket stays."""
    rounds = BucketRounds(8, Clock())
    read, began = rounds.to_read("events/0")
    rounds.note("events/0", 3, 500.0)  # committed while the round's reads were out
    rounds.found("events/0", dict.fromkeys(read, NEVER), began)

    assert rounds.to_read("events/0", 499.0)[0] == []
    assert rounds.to_read("events/0", 500.0)[0] == [3]
    read, began = rounds.to_read("events/0", 500.0)
    rounds.found("events/0", {3: NEVER}, began)  # a later round: the note is spent
    assert rounds.to_read("events/0", 10_000.0)[0] == []


def test_an_expiry_is_read_from_its_time_the_earliest_of_the_notes_and_the_index() -> None:
    rounds = BucketRounds(8, Clock())
    read, began = rounds.to_read("events/0", 0)
    rounds.found("events/0", {b: 2_000.0 if b == 1 else NEVER for b in read}, began)
    rounds.note("events/0", 4, 3_000.0)
    rounds.note("events/0", 4, 2_500.0)
    rounds.note("events/0", 1, 9_000.0)  # later than what the index holds: no change

    assert rounds.to_read("events/0", 1_999)[0] == []
    assert rounds.to_read("events/0", 2_000)[0] == [1]
    assert rounds.to_read("events/0", 2_500)[0] == [1, 4]
    assert rounds.tracked("events/0") == [1, 4]


def test_every_bucket_is_read_again_after_the_full_round_interval_and_after_forget() -> None:
    clock = Clock()
    rounds = BucketRounds(4, clock)
    read, began = rounds.to_read("events/0")
    rounds.found("events/0", dict.fromkeys(read, NEVER), began)

    clock.now += FULL_ROUND_S - 0.01
    assert rounds.to_read("events/0")[0] == []
    clock.now += 0.01
    assert rounds.to_read("events/0")[0] == [0, 1, 2, 3], "another process's writes"

    rounds.found("events/0", dict.fromkeys(range(4), NEVER), 0)
    rounds.note("events/0", 1)
    rounds.forget()
    assert rounds.to_read("events/0")[0] == [0, 1, 2, 3], "partitions moved"
