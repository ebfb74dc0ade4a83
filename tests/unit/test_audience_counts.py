"""Audience sizes: kept members by a count, expiring (anonymous-only) ones with the
deadline of their keys, so that a profile Redis expires leaves the sizes with no write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from attributes.aggregators import State
from attributes.audiences import AudienceSpec, compile_audience
from attributes.expressions import INT
from attributes.paths import compile_path
from attributes.profile import ProfileState
from attributes.rules import parse_rules
from attributes.ruleset import CompiledAttribute, RuleSet
from attributes.specs import AttributeSpec
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.test_processor import Fragile, Pipeline, poke, records
from tests.unit.trust_support import trusting
from traitflow.audience_counts import SizeChanges, size_changes
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

NOW = 1_794_394_800_000
TTL = 3_600_000

RULES = parse_rules(
    """\
attributes:
  - name: orders
    function: count
    event: Order
audiences:
  - name: buyers
    condition: orders > 0
  - name: repeat_buyers
    condition: orders > 1
""",
    "rules.yaml",
)


def write(
    audiences: list[str], entered: Sequence[str] = (), exited: Sequence[str] = (), **fields: Any
) -> ProfileWrite:
    done = ProfileWrite(ProfileState(id="p", audiences=audiences), b"", None, **fields)
    done.entered, done.exited = list(entered), list(exited)
    return done


# --- the changes a commit makes ----------------------------------------------------------


def test_a_kept_profile_changes_the_counts_by_its_entries_exits_and_departures() -> None:
    kept = write(["a", "b"], entered=["a", "b"], exited=["c"], departed=["a", "c"])
    assert size_changes([kept], NOW) == SizeChanges(kept={"b": 1, "c": -2})


def test_an_expiring_profile_is_counted_with_its_deadline_not_in_the_counts() -> None:
    new = write(["a"], entered=["a"], ttl_ms=TTL)
    assert size_changes([new], NOW) == SizeChanges(expiring={"a": {"p": NOW + TTL}})


def test_each_write_of_an_expiring_profile_moves_the_deadline_of_every_membership() -> None:
    again = write(["a", "b"], entered=["b"], exited=["c"], ttl_ms=TTL, was_expiring=True)
    assert size_changes([again], NOW) == SizeChanges(
        expiring={"a": {"p": NOW + TTL}, "b": {"p": NOW + TTL}}, dropped={"c": ["p"]}
    )


def test_a_profile_that_stops_expiring_moves_its_memberships_to_the_counts() -> None:
    linked = write(["a", "b"], entered=["b"], exited=["c"], was_expiring=True)
    changes = size_changes([linked], NOW)
    assert changes.kept == {"a": 1, "b": 1}
    assert {name: sorted(pids) for name, pids in changes.dropped.items()} == {
        "a": ["p"],
        "c": ["p"],
    }
    assert changes.expiring == {}


def test_a_merged_away_expiring_profile_is_dropped_from_the_expiring_members() -> None:
    survivor = write(["a"], departed_expiring=[("anon", "a"), ("anon", "b")])
    assert size_changes([survivor], NOW) == SizeChanges(dropped={"a": ["anon"], "b": ["anon"]})


def test_changes_that_cancel_out_leave_no_count() -> None:
    one = write(["a"], entered=["a"])
    other = write([], exited=["a"])
    assert size_changes([one, other], NOW).kept == {}


# --- through the worker's logic, on a clock ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> float:
        return self.ms / 1000


def order(offset: int, **ids: str) -> Record:
    body = {"type": "track", "event": "Order", "messageId": f"m{offset}", **ids}
    return Record("events", 0, offset, orjson.dumps(body), NOW)


@pytest.fixture
def world() -> tuple[BatchProcessor, MemoryProfileStore, Clock]:
    clock = Clock()
    store = MemoryProfileStore(clock=lambda: clock.ms)
    processor = BatchProcessor(
        RULES,
        store,
        ListDeadLetters(),
        clock=clock,
        anonymous_ttl_ms=TTL,
        trust=trusting("events"),
    )
    return processor, store, clock


@pytest.mark.anyio
async def test_an_anonymous_member_leaves_the_size_when_its_keys_expire(world: Any) -> None:
    processor, store, clock = world
    await processor.process([order(0, anonymousId="a-1"), order(1, userId="u-1")])
    assert await store.audience_sizes("user") == {"buyers": 2}
    clock.ms += TTL - 1
    await processor.process([order(2, anonymousId="a-1")])  # activity moves the deadline
    assert await store.audience_sizes("user") == {"buyers": 2, "repeat_buyers": 1}
    clock.ms += TTL - 1
    assert await store.audience_sizes("user") == {"buyers": 2, "repeat_buyers": 1}
    clock.ms += 1  # idle for the whole lifetime: Redis deletes its keys now
    assert await store.audience_sizes("user") == {"buyers": 1, "repeat_buyers": 0}


@pytest.mark.anyio
async def test_a_login_merging_an_anonymous_member_counts_the_person_once(world: Any) -> None:
    processor, store, clock = world
    await processor.process([order(0, anonymousId="a-1"), order(1, userId="u-1")])
    await processor.process([order(2, userId="u-1", anonymousId="a-1")])
    assert await store.audience_sizes("user") == {"buyers": 1, "repeat_buyers": 1}
    clock.ms += 2 * TTL  # the survivor is kept for good
    assert await store.audience_sizes("user") == {"buyers": 1, "repeat_buyers": 1}


@pytest.mark.anyio
async def test_an_anonymous_member_linked_to_a_new_user_stays_counted(world: Any) -> None:
    processor, store, clock = world
    await processor.process([order(0, anonymousId="a-1")])
    assert await store.audience_sizes("user") == {"buyers": 1}
    # a link without a merge: the anonymous profile becomes the user's and stops expiring
    link = Record(
        "events",
        0,
        1,
        orjson.dumps(
            {"type": "identify", "messageId": "m1", "userId": "u-9", "anonymousId": "a-1"}
        ),
        NOW,
    )
    await processor.process([link])
    assert len(store.views) == 1
    clock.ms += 2 * TTL
    assert await store.audience_sizes("user") == {"buyers": 1}


@pytest.mark.anyio
async def test_without_a_lifetime_every_member_is_kept() -> None:
    clock = Clock()
    store = MemoryProfileStore(clock=lambda: clock.ms)
    processor = BatchProcessor(
        RULES, store, ListDeadLetters(), clock=clock, trust=trusting("events")
    )
    await processor.process([order(0, anonymousId="a-1")])
    clock.ms += 10 * TTL
    assert await store.audience_sizes("user") == {"buyers": 1}


# --- the slow path: events applied one by one, all of them kept ---------------------------


class BreaksOnce(Fragile):
    """A count whose first add raises: the batch's fast path fails, and each event alone
    then works (a failure of the combination, not of one event)."""

    function = "breaks_once"

    def __init__(self) -> None:
        self.broken = False

    def add(self, state: State, value: Any, ts: int, mid: str) -> State:
        if not self.broken:
            self.broken = True
            raise RuntimeError("once")
        return state + 1


@pytest.mark.anyio
async def test_the_slow_path_s_write_counts_the_entries_of_all_its_events() -> None:
    """The slow path keeps a write per event; the committed one is the last, whose own
    comparison sees the audience entered by the first: the batch's entries are counted
    against the state before the batch."""
    spec = AttributeSpec(name="pokes", function="count", field="properties.x")
    compiled = CompiledAttribute("pokes", "user", BreaksOnce(), compile_path("properties.x"))
    audience = compile_audience(AudienceSpec(name="poked", condition="pokes >= 1"), {"pokes": INT})
    pipeline = Pipeline(RuleSet.build([(spec, compiled)], audiences=[audience]))
    await pipeline.process(records([poke("u-1", 1), poke("u-1", 2)]))
    assert pipeline.reasons == []  # nothing dead-lettered: the slow path's write is committed
    assert (await pipeline.view("id", "u-1"))["attributes"]["pokes"] == 2
    assert await pipeline.store.audience_sizes("user") == {"poked": 1}
