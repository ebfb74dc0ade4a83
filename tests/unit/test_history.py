"""Where an attribute's history lies in a partition (`streams.history`): the end a
version's notes give, the offsets a mid-batch switch noted past it, and what a span
reads."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.history import Span, after_horizon, committed_before, history_end


def test_the_history_ends_where_the_version_or_a_newer_one_began() -> None:
    starts: dict[bytes | str, bytes | str] = {b"3": b"120", b"5": b"90", b"2": b"40"}
    assert history_end(starts, 3) == 90  # a later version's batch can start earlier
    assert history_end(starts, 6) is None  # no batch at it yet
    assert history_end({}, 1) is None
    assert history_end({"4": "7"}, 4) == 7  # decoded replies read alike
    # a mid-batch switch's note of what was committed at the older version is not a start
    assert history_end({b"3": b"120", b"3:user:2": b"121,125"}, 3) == 120


def test_offsets_committed_at_an_older_version_after_the_start_are_history_too() -> None:
    """Noted as `"{newer}:{entity}:{older}"` by a worker that switched midway through
    a batch (`streams.rule_versions`): history for an attribute of the entity whose
    version is past `older` and at most `newer`; for any other, counted live."""
    starts: dict[bytes | str, bytes | str] = {
        b"3": b"120",
        b"3:user:1": b"121,125",
        b"3:account:1": b"122",
        b"5": b"300",
        b"5:user:3": b"301",
    }
    assert committed_before(starts, 3, "user") == {121, 125}
    assert committed_before(starts, 2, "user") == {121, 125}  # 2 is past 1, not past 3
    assert committed_before(starts, 1, "user") == set()  # committed at 1: counted live
    assert committed_before(starts, 4, "user") == {301}
    assert committed_before(starts, 3, "account") == {122}
    assert committed_before({"3": "120"}, 3, "user") == set()


def test_a_span_reads_to_its_end_and_the_offsets_noted_past_it() -> None:
    span = Span(TopicPartition("events", 0), 100, 120, frozenset({121, 125}))
    assert span.stop == 126
    assert [o for o in range(118, 128) if span.wants(o)] == [118, 119, 121, 125]
    assert Span(TopicPartition("events", 0), 100, 120).stop == 120


def test_a_deleted_source_s_partition_is_read_from_its_horizon_on() -> None:
    """A source delete job's horizon (a rules version: `attributes.recomputation`):
    what the workers computed of the partition before they switched to it is left out,
    the offsets a mid-batch switch committed at an older version past it included."""
    starts: dict[bytes | str, bytes | str] = {b"2": b"50", b"2:user:1": b"52,55", b"4": b"90"}
    # an attribute of version 4: history below 90; the job's horizon is version 2
    span = Span(TopicPartition("crm", 0), 10, 90, frozenset())
    after = after_horizon(span, starts, 2, "user")
    assert after.low == 50
    assert [o for o in range(48, 58) if after.wants(o)] == [50, 51, 53, 54, 56, 57]
    # another entity's attribute: that batch's early commit was not its history
    assert after_horizon(span, starts, 2, "account").skip == frozenset()
    # a partition no batch reached at the horizon's version: all of it left out
    nothing = after_horizon(span, {b"1": b"5"}, 2, "user")
    assert nothing.low == nothing.end == 90
    # an attribute whose history ends before the horizon (its own version is older)
    early = after_horizon(
        Span(TopicPartition("crm", 0), 10, 30, frozenset({31})), starts, 2, "user"
    )
    assert (early.low, early.end, early.also) == (50, 50, frozenset())
