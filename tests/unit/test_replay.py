"""What a replay chooses to publish and how it remembers what it did (the publishing
itself, against a real broker and Redis: tests/integration/test_dead_letter_replay.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.dead_letters import Letter
from traitflow import replay
from traitflow.replay import (
    InvalidSince,
    LetterFilter,
    ReplayLedger,
    ReplayPlan,
    _chunks,
    parse_since,
    plan_replay,
)


def letter(
    letter_id: str,
    origin_offset: int,
    *,
    parked: bool = False,
    reason: str = "no id",
    time_ms: int = 1_000,
    topic: str = "events",
) -> Letter:
    return Letter(letter_id, parked, topic, 0, origin_offset, reason, b"{}", time_ms)


def test_the_ledger_keeps_a_mark_and_the_offsets_replayed_beyond_it() -> None:
    ledger = ReplayLedger()
    for offset in (0, 1, 3, 4):
        ledger.record(offset)
    assert (ledger.next, ledger.done) == (2, {3, 4})
    assert [ledger.replayed(o) for o in range(6)] == [True, True, False, True, True, False]
    ledger.record(2)  # the gap filled: the mark moves over everything done
    assert (ledger.next, ledger.done) == (5, set())
    ledger.record(1)  # again: nothing changes
    assert (ledger.next, ledger.done) == (5, set())


def test_the_ledger_forgets_what_retention_deleted() -> None:
    ledger = ReplayLedger(2, {6, 7, 9})
    ledger.forget_before(6)
    assert (ledger.next, ledger.done) == (8, {9})
    ledger.forget_before(3)  # behind the mark: nothing to forget
    assert (ledger.next, ledger.done) == (8, {9})


def test_the_ledger_round_trips_through_redis_bytes() -> None:
    ledger = ReplayLedger(4, {9, 7})
    assert ReplayLedger.decode(ledger.encode()) == ledger
    assert ReplayLedger.decode(None) == ReplayLedger()


def test_since_is_a_duration_back_from_now_or_a_time() -> None:
    now = 1_800_000_000.0
    assert parse_since("90s", now) == (now - 90) * 1000
    assert parse_since("2h", now) == (now - 7200) * 1000
    assert parse_since("1.5d", now) == (now - 129_600) * 1000
    expected = datetime(2026, 11, 4, 9, tzinfo=UTC).timestamp() * 1000
    assert parse_since("2026-11-04T09:00", now) == expected
    assert parse_since("2026-11-04T10:00+01:00", now) == expected
    with pytest.raises(InvalidSince, match="give a duration"):
        parse_since("yesterday", now)
    with pytest.raises(InvalidSince, match="give a duration"):
        parse_since("9" * 400 + "s", now)  # no float holds it


def test_the_filter_matches_time_and_reason() -> None:
    old = letter("0:1", 1, time_ms=500, reason="Event is over 262144 bytes")
    new = letter("0:2", 2, time_ms=2_000, reason="no id")
    assert LetterFilter().matches(old)
    assert not LetterFilter(since_ms=1_000).matches(old)
    assert LetterFilter(since_ms=1_000).matches(new)
    assert LetterFilter(reason="OVER 262144").matches(old)
    assert not LetterFilter(reason="over").matches(new)


def test_a_plan_skips_the_replayed_and_publishes_each_origin_once() -> None:
    letters = [
        letter("0:0", 10),  # replayed before
        letter("0:1", 11),
        letter("1:0", 11),  # the same origin dead-lettered twice (a retried batch)
        letter("0:2", 12, reason="too big"),  # left out by the filter
        letter("0:3", 13, topic="gone"),  # its topic is no ingest topic now
        letter("1700-0", 11, parked=True),  # also delivered late after it was parked
        letter("1701-0", 14, parked=True),
    ]
    plan = plan_replay(letters, {0: ReplayLedger(1)}, LetterFilter(reason="no id"), {"events"})
    assert [x.id for x in plan.publish] == ["0:1", "1701-0"]
    assert [x.id for x in plan.duplicates] == ["1:0", "1700-0"]
    assert [x.id for x in plan.unroutable] == ["0:3"]
    assert plan.total() == 4


def test_duplicates_are_done_in_the_chunk_of_their_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "CHUNK", 2)
    plan = ReplayPlan(
        publish=[letter("0:0", 1), letter("0:1", 2), letter("0:2", 3)],
        duplicates=[letter("1:0", 3), letter("1:1", 1)],
    )
    chunks = [([x.id for x in chunk], [x.id for x in extra]) for chunk, extra in _chunks(plan)]
    assert chunks == [(["0:0", "0:1"], ["1:1"]), (["0:2"], ["1:0"])]
