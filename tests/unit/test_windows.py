from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attributes.aggregators import Aggregator, Count, Sum
from attributes.windows import (
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    CalendarWindow,
    OutsideWindow,
    SlidingMonths,
    SlidingWindow,
    Window,
    WindowedAggregator,
    add_months,
    bucket_size,
    make_window,
)
from tests.unit.test_aggregators import CASES, Item, same


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def iso(moment: int) -> str:
    return datetime.fromtimestamp(moment / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- window definitions ---------------------------------------------------------------------


def test_the_bucket_follows_the_window_length() -> None:
    assert bucket_size(30 * MINUTE) == SECOND
    assert bucket_size(HOUR) == SECOND
    assert bucket_size(24 * HOUR) == MINUTE
    assert bucket_size(30 * DAY) == HOUR
    assert bucket_size(365 * DAY) == DAY


def test_a_sliding_window_ends_with_the_current_bucket() -> None:
    window = make_window(30, "days")
    assert isinstance(window, SlidingWindow)
    now = ms("2026-11-23 14:25:10")
    assert iso(window.start(now)) == "2026-10-24 15:00:00"
    assert iso(window.bucket(now)) == "2026-11-23 14:00:00"
    assert iso(window.expiry(window.bucket(ms("2026-11-01 09:59:59")))) == "2026-12-01 09:00:00"


def test_sliding_months_go_back_calendar_months_from_today() -> None:
    window = make_window(1, "months")
    assert isinstance(window, SlidingMonths)
    assert iso(window.start(ms("2026-03-15 10:00:00"))) == "2026-02-16 00:00:00"
    assert iso(window.start(ms("2026-03-31 10:00:00"))) == "2026-03-01 00:00:00"  # 28 Feb + 1
    assert iso(window.expiry(ms("2026-01-31 00:00:00"))) == "2026-03-01 00:00:00"
    assert iso(window.start(ms("2026-03-01 00:00:00"))) == "2026-02-02 00:00:00"


def test_add_months_clamps_the_day() -> None:
    assert iso(add_months(ms("2024-01-31 12:00:00"), 1)) == "2024-02-29 12:00:00"
    assert iso(add_months(ms("2024-03-31 00:00:00"), -13)) == "2023-02-28 00:00:00"
    assert iso(add_months(ms("2024-11-15 00:00:00"), 2)) == "2025-01-15 00:00:00"


def test_calendar_weeks_run_sunday_to_saturday() -> None:
    window = make_window(1, "weeks", calendar_aligned=True)
    assert isinstance(window, CalendarWindow)
    monday = ms("2026-11-23 08:00:00")
    assert iso(window.start(monday)) == "2026-11-22 00:00:00"  # a Sunday
    saturday_night = ms("2026-11-28 23:59:59")
    assert window.bucket(saturday_night) == window.bucket(monday)
    assert iso(window.expiry(window.bucket(monday))) == "2026-11-29 00:00:00"


def test_calendar_months_include_the_current_one() -> None:
    window = make_window(3, "months", calendar_aligned=True)
    assert iso(window.start(ms("2026-01-10 00:00:00"))) == "2025-11-01 00:00:00"
    assert iso(window.expiry(ms("2025-11-01 00:00:00"))) == "2026-02-01 00:00:00"


WINDOWS = [
    make_window(90, "minutes"),
    make_window(2, "hours"),
    make_window(3, "days"),
    make_window(2, "weeks"),
    make_window(200, "days"),
    make_window(1, "months"),
    make_window(5, "months"),
    make_window(1, "hours", calendar_aligned=True),
    make_window(2, "days", calendar_aligned=True),
    make_window(1, "weeks", calendar_aligned=True),
    make_window(2, "months", calendar_aligned=True),
]
#: 1990 to 2040
moments = st.integers(min_value=631_152_000_000, max_value=2_208_988_800_000)


@pytest.mark.parametrize("window", WINDOWS, ids=lambda window: window.label)
@given(now=moments, earlier=st.integers(min_value=0, max_value=400 * DAY))
def test_window_laws(window: Window, now: int, earlier: int) -> None:
    start = window.start(now)
    assert start == window.bucket(start)  # windows start on a bucket
    assert start <= window.bucket(now)  # the current bucket is inside
    assert window.start(now - earlier) <= start  # the start only moves forward
    bucket = window.bucket(now - earlier)
    expiry = window.expiry(bucket)
    assert window.start(expiry) > bucket  # at its expiry the bucket is out
    assert window.start(expiry - 1) <= bucket  # and not a millisecond earlier


# --- the oracle: a windowed aggregator equals a batch over the window's events --------------


def nominal_length(window: Window) -> int:
    base = ms("2026-06-15 12:00:00")
    return window.expiry(window.bucket(base)) - window.start(base)


def timed(window: Window, items: list[Item], jitter: int) -> list[Item]:
    """Spread the cases' small timestamps (0..20) over about three window lengths before
    a base moment and one after, keeping their order (ties stay ties)."""
    step = nominal_length(window) // 6
    base = ms("2026-06-15 12:00:00") + jitter
    return [(value, base + (ts - 14) * step, mid) for value, ts, mid in items]


def process(windowed: WindowedAggregator, arrivals: list[tuple[Item, int]]) -> Any:
    state = windowed.initial()
    for (value, ts, mid), now in arrivals:
        with contextlib.suppress(OutsideWindow):
            state = windowed.add(state, value, ts=ts, mid=mid, now=now)
    return state


def draw_arrivals(
    data: st.DataObject, window: Window, items: list[Item]
) -> tuple[list[tuple[Item, int]], int]:
    """The events in a random order, each with a processing time (non-decreasing), and
    the moment the result is read."""
    order = data.draw(st.permutations(items))
    length = nominal_length(window)
    base = ms("2026-06-15 12:00:00")
    offsets = sorted(data.draw(st.lists(st.integers(0, length), min_size=len(order) + 1)))
    times = [base + offset for offset in offsets[: len(order) + 1]]
    return list(zip(order, times, strict=False)), times[len(order)]


@pytest.mark.parametrize(("aggregator", "items", "batch"), CASES)
@given(data=st.data())
def test_a_window_equals_the_batch_over_its_events(
    aggregator: Aggregator,
    items: st.SearchStrategy[list[Item]],
    batch: Any,
    data: st.DataObject,
) -> None:
    window = data.draw(st.sampled_from(WINDOWS))
    events = timed(window, data.draw(items), data.draw(st.integers(0, DAY)))
    arrivals, read_at = draw_arrivals(data, window, events)
    windowed = WindowedAggregator(aggregator, window)
    state = process(windowed, arrivals)

    start = window.start(read_at)
    inside = [item for item in events if window.bucket(item[1]) >= start]
    assert same(windowed.result(state, read_at), batch(inside))

    # split anywhere, processed apart, merged: the same
    cut = data.draw(st.integers(0, len(arrivals)))
    left, right = process(windowed, arrivals[:cut]), process(windowed, arrivals[cut:])
    left_before, right_before = copy.deepcopy(left), copy.deepcopy(right)
    merged = windowed.merge(left, right)
    assert same(windowed.result(merged, read_at), batch(inside))
    assert (left, right) == (left_before, right_before)

    # expiring drops only what is out of the window, and says when to look again
    windowed.expire(state, read_at)
    assert same(windowed.result(state, read_at), batch(inside))
    due = windowed.next_expiry(state)
    assert (due is None) == (not state)
    assert due is None or due > read_at


@given(data=st.data())
def test_allowed_lateness_ignores_events_processed_too_late(data: st.DataObject) -> None:
    window = make_window(7, "days")
    lateness = 2 * HOUR
    windowed = WindowedAggregator(Count(), window, lateness)
    base = ms("2026-06-15 12:00:00")
    events = data.draw(
        st.lists(st.tuples(st.integers(-8 * DAY, HOUR), st.integers(0, 6 * HOUR)), max_size=30)
    )
    arrivals: list[tuple[Item, int]] = [
        ((None, base + ts, f"m{i}"), base + ts + delay) for i, (ts, delay) in enumerate(events)
    ]
    arrivals.sort(key=lambda arrival: arrival[1])
    read_at = max([base, *(now for _, now in arrivals)])
    state = process(windowed, arrivals)
    start = window.start(read_at)
    expected = sum(
        1 for (_, ts, _), now in arrivals if window.bucket(ts) >= start and now - ts <= lateness
    )
    assert windowed.result(state, read_at) == expected


def test_an_event_older_than_the_window_is_refused_with_a_reason() -> None:
    windowed = WindowedAggregator(Sum(), make_window(30, "days"))
    now = ms("2026-11-23 12:00:00")
    with pytest.raises(OutsideWindow, match="before the 30 days window"):
        windowed.add(windowed.initial(), 5, ts=now - 31 * DAY, mid="m", now=now)
    late = WindowedAggregator(Sum(), make_window(30, "days"), lateness=HOUR)
    with pytest.raises(OutsideWindow, match="arrived 7200s after its event time"):
        late.add(late.initial(), 5, ts=now - 2 * HOUR, mid="m", now=now)


def test_a_count_drops_when_its_day_passes_without_new_events() -> None:
    windowed = WindowedAggregator(Count(), make_window(30, "days"))
    now = ms("2026-11-23 12:00:00")
    state = windowed.initial()
    for days_ago in (29, 10, 1):
        state = windowed.add(state, None, ts=now - days_ago * DAY, mid=f"m{days_ago}", now=now)
    assert windowed.result(state, now) == 3
    due = windowed.next_expiry(state)
    assert due is not None
    assert iso(due) == "2026-11-24 12:00:00"  # the 29-days-ago bucket: 30 days after it
    assert windowed.result(state, due - 1) == 3
    assert windowed.result(state, due) == 2
    windowed.expire(state, due)
    assert len(state) == 2
    assert windowed.result(state, now + 30 * DAY) == 0


def test_future_events_count_now() -> None:
    """Clock skew: an event stamped a little ahead of the worker still counts."""
    windowed = WindowedAggregator(Count(), make_window(1, "hours"))
    now = ms("2026-11-23 12:00:00")
    state = windowed.add(windowed.initial(), None, ts=now + 5 * MINUTE, mid="m", now=now)
    assert windowed.result(state, now) == 1
