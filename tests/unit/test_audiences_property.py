"""The oracle for audiences: whatever the batching and however time moves, each
profile's served membership and every audience's size equal a batch evaluation of the
conditions over the final profiles (a plain Python restatement of each condition)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.rules import parse_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore
from traitflow.store import ProfileStore

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_794_394_800_000  # 2026-11-11T11:00:00Z
USERS = ["u-1", "u-2", "u-3"]

RULES = parse_rules("""\
attributes:
  - name: orders_3d
    function: count
    event: Order
    lookback: {count: 3, unit: days}
  - name: spend
    function: sum
    field: properties.revenue
    event: Order
  - name: visits
    function: count
    type: [page]
audiences:
  - name: recent_buyer
    condition: orders_3d > 0
  - name: big_spender
    condition: spend >= 100.0
  - name: pro_visitor
    condition: traits.plan == "pro" && visits >= 2
  - name: lapsed
    condition: spend > 0.0 && orders_3d == 0
""")

#: each condition again, in Python, over (attributes, traits)
ORACLE: dict[str, Callable[[dict[str, Any], dict[str, Any]], bool]] = {
    "recent_buyer": lambda a, t: a["orders_3d"] > 0,
    "big_spender": lambda a, t: a["spend"] >= 100.0,
    "pro_visitor": lambda a, t: t.get("plan") == "pro" and a["visits"] >= 2,
    "lapsed": lambda a, t: a["spend"] > 0.0 and a["orders_3d"] == 0,
}

bodies = st.one_of(
    st.builds(
        lambda revenue: {"type": "track", "event": "Order", "properties": {"revenue": revenue}},
        st.integers(0, 80),
    ),
    st.builds(
        lambda plan: {"type": "identify", "traits": {"plan": plan}},
        st.sampled_from(["free", "pro"]),
    ),
    st.just({"type": "page"}),
)
#: (body, user, event time in hours before NOW)
streams = st.lists(
    st.tuples(bodies, st.sampled_from(USERS), st.integers(0, 24 * 6)), min_size=1, max_size=30
)


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> float:
        return self.ms / 1000


def to_records(stream: list[tuple[dict[str, Any], str, int]]) -> list[Record]:
    return [
        Record(
            "events",
            0,
            n,
            orjson.dumps({**body, "userId": user, "messageId": f"m-{n}"}),
            NOW - hours * HOUR,
        )
        for n, (body, user, hours) in enumerate(stream)
    ]


async def run(
    batches: list[list[Record]], moves: list[int], store: ProfileStore, clock: Clock
) -> None:
    """Each batch, then time moves on by its hours and due windows are re-rendered."""
    processor = BatchProcessor(RULES, store, ListDeadLetters(), clock=clock)
    for batch, hours in zip(batches, moves, strict=True):
        await processor.process(batch)
        clock.ms += hours * HOUR
        await processor.expire("events/0", 1000)


@settings(max_examples=80, deadline=None)
@given(
    stream=streams,
    data=st.data(),
    cached=st.booleans(),
)
def test_membership_and_sizes_equal_a_batch_evaluation(
    stream: list[Any], data: st.DataObject, cached: bool
) -> None:
    records = to_records(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=4)))
    batches = [records[a:b] for a, b in itertools.pairwise([0, *cuts, len(records)])]
    moves = data.draw(st.lists(st.integers(0, 50), min_size=len(batches), max_size=len(batches)))
    memory = MemoryProfileStore()
    store: ProfileStore = CachedProfileStore(memory, 2) if cached else memory
    clock = Clock()
    asyncio.run(run(batches, moves, store, clock))
    # the 3-day window in 1-hour buckets, at the final time (on the hour): from the
    # hour 71 hours before it on (`attributes.windows`)
    start = clock.ms - 71 * HOUR

    expected_sizes = dict.fromkeys(ORACLE, 0)
    for user in USERS:
        raw = asyncio.run(memory.read_view("user", "id", user))
        if raw is None:
            assert all(u != user for _, u, _ in stream)
            continue
        view = orjson.loads(raw)
        values, traits = view["attributes"], view["traits"]
        # the attributes are checked against the events themselves too
        orders = [(b, h) for b, u, h in stream if u == user and b["type"] == "track"]
        assert values["spend"] == sum(b["properties"]["revenue"] for b, _ in orders)
        assert values["orders_3d"] == sum(NOW - h * HOUR >= start for _, h in orders)
        expected = {name: rule(values, traits) for name, rule in ORACLE.items()}
        assert view["_audiences"] == expected
        for name, member in expected.items():
            expected_sizes[name] += member
    sizes = asyncio.run(memory.audience_sizes("user"))
    assert {name: sizes.get(name, 0) for name in ORACLE} == expected_sizes
