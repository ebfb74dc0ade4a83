"""Profile counts per entity, source and identity namespace (`traitflow.profile_counts`):
kept by each commit as audience sizes are, through merges, deletes, erasures and
anonymous profiles that expire with no write; always equal to a count over the
profiles left (`tally`)."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from attributes.erasure import erase_event
from attributes.profile import ProfileState, decode_state, encode_state
from attributes.rules import parse_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.test_commit_plan import Recorder
from tests.unit.trust_support import trusting
from traitflow.audience_counts import SizeChanges, size_changes
from traitflow.commit_plan import CommitPlan
from traitflow.commit_script import CommandList
from traitflow.key_layout import KeyLayout
from traitflow.memory_store import MemoryProfileStore
from traitflow.profile_counts import (
    categories,
    category_moves,
    composition,
    departures,
    recount,
    tally,
)
from traitflow.store import ProfileWrite

NOW = 1_794_394_800_000
TTL = 3_600_000

RULES = parse_rules(
    """\
attributes:
  - name: orders
    function: count
    event: Order
""",
    "rules.yaml",
)


# --- pure: what a profile is counted in, and what a write changes ---------------------------


def test_a_profile_is_counted_in_its_sources_and_namespaces_and_nothing_once_deleted() -> None:
    state = ProfileState(
        id="p",
        identities={"user_id": ["u"], "email": ["a@x.io"], "anonymous_id": []},
        source_traits={"web": {"plan": [1, "m", "pro"]}, "crm": {}},
    )
    assert categories(state) == ["profile", "source:web", "namespace:email", "namespace:user_id"]
    state.deleted = True
    assert categories(state) == []


def test_a_write_enters_and_exits_against_what_its_state_was_last_counted_in() -> None:
    state = ProfileState(id="p", identities={"email": ["a@x.io"]}, counted=["profile", "x"])
    write = ProfileWrite(state, b"old", None)
    recount(write)
    assert write.categories_entered == ["namespace:email"]
    assert write.categories_exited == ["x"]
    assert decode_state(write.encoded_state).counted == ["profile", "namespace:email"]
    again = ProfileWrite(state, b"unchanged", None)
    recount(again)  # nothing moved: the encoding is left alone
    assert (again.categories_entered, again.encoded_state) == ([], b"unchanged")


def test_a_state_stored_before_counting_is_counted_at_its_next_write() -> None:
    legacy = ProfileState(id="p", identities={"user_id": ["u"]})
    assert decode_state(encode_state(legacy)).counted is None
    write = ProfileWrite(legacy, b"", None)
    recount(write)
    assert size_changes([write], NOW, category_moves) == SizeChanges(
        kept={"profile": 1, "namespace:user_id": 1}
    )


def test_merged_away_profiles_leave_their_categories_through_a_chain_of_merges() -> None:
    states = {
        "a": ProfileState(id="a", counted=["profile", "namespace:anonymous_id"]),
        "b": ProfileState(id="b", counted=["profile", "namespace:email"]),
        "c": ProfileState(id="c", counted=["profile"]),
        "new": ProfileState(id="new"),  # created by the batch: never counted
    }
    kept, expiring = departures([("a", "b"), ("b", "c"), ("new", "c")], states, {"a"})
    assert kept == {"c": ["profile", "namespace:email"]}
    assert expiring == {"c": [("a", "profile"), ("a", "namespace:anonymous_id")]}


def test_composition_splits_the_counts_and_drops_empty_categories() -> None:
    counts = {"profile": 3, "source:web": 2, "source:crm": 0, "namespace:email": 1}
    assert composition(counts) == {
        "profiles": 3,
        "sources": {"web": 2},
        "namespaces": {"email": 1},
    }


def test_the_commit_adjusts_the_counts_in_its_own_transaction() -> None:
    kept = ProfileWrite(ProfileState(id="u-1", identities={"user_id": ["u-1"]}), b"", b"{}")
    anonymous = ProfileWrite(
        ProfileState(id="a-1", identities={"anonymous_id": ["a-1"]}), b"", b"{}", ttl_ms=60_000
    )
    kept.categories_departed = ["profile", "namespace:email"]
    for write in (kept, anonymous):
        recount(write)
    plan = CommitPlan.of(KeyLayout("tf"), "user", [kept, anonymous], now=NOW)
    recorder = Recorder()
    plan.queue(cast(CommandList, recorder), bucket_ms=1000, dedupe_window_ms=5000)
    counted = [c for c in recorder.commands if ":pc" in str(c[1][0])]
    assert counted[:4] == [
        ("hincrby", ("tf:pc:user", "namespace:email", -1)),
        ("hincrby", ("tf:pc:user", "namespace:user_id", 1)),
        ("zadd", ("tf:pcx:user:profile", {"a-1": NOW + 60_000})),
        ("zadd", ("tf:pcx:user:namespace:anonymous_id", {"a-1": NOW + 60_000})),
    ]
    touched = {"profile", "namespace:anonymous_id"}
    name, (key, *members) = counted[4]
    assert (name, key, set(members)) == ("sadd", "tf:pcx:user", touched)
    pruned = {(c[0], c[1][0].removeprefix("tf:pcx:user:"), *c[1][1:]) for c in counted[5:]}
    assert pruned == {("zremrangebyscore", name, "-inf", NOW) for name in touched}
    assert recorder.commands[0][0] == "mset"  # the same MULTI as the states


# --- through the worker's logic, on a clock ---------------------------------------------------


class World:
    """A processor over topics `web-events` (source web) and `crm-events` (source crm,
    whose deletes remove the record), with an anonymous TTL on an injectable clock."""

    def __init__(self) -> None:
        self.ms = NOW
        self.store = MemoryProfileStore(clock=lambda: self.ms)
        self.processor = BatchProcessor(
            RULES,
            self.store,
            ListDeadLetters(),
            clock=lambda: self.ms / 1000,
            anonymous_ttl_ms=TTL,
            sources={"web-events": "web", "crm-events": "crm"},
            retractions={"crm": "record"},
            trust=trusting("web", "crm"),
        )
        self.offsets: dict[str, int] = {}

    async def send(self, topic: str, *bodies: dict[str, Any]) -> None:
        batch = []
        for body in bodies:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            batch.append(Record(topic, 0, offset, orjson.dumps(body), self.ms))
        await self.processor.process(batch)

    async def counts(self) -> dict[str, int]:
        return {k: n for k, n in (await self.store.profile_counts("user")).items() if n}


def identify(source_id: dict[str, str], **traits: Any) -> dict[str, Any]:
    return {"type": "identify", **source_id, "traits": traits}


def order(**ids: str) -> dict[str, Any]:
    return {"type": "track", "event": "Order", **ids}


@pytest.fixture
def world() -> World:
    return World()


@pytest.mark.anyio
async def test_sources_and_namespaces_follow_writes_merges_and_deletes(world: World) -> None:
    await world.send("web-events", identify({"userId": "u-1"}, plan="pro"), order(userId="u-2"))
    await world.send("crm-events", identify({"userId": "u-1"}, email="ada@x.io"))
    assert await world.counts() == {
        "profile": 2,
        "source:web": 1,
        "source:crm": 1,
        "namespace:user_id": 2,
        "namespace:email": 1,
    }
    await world.send("crm-events", identify({"userId": "u-3"}, email="bob@x.io"))
    await world.send("web-events", {"type": "identify", "userId": "u-3", "traits": {}})
    assert (await world.counts())["profile"] == 3
    # a crm delete of u-1 (record): it leaves every category, its data from web too
    await world.send("crm-events", {"type": "delete", "userId": "u-1"})
    assert await world.counts() == {  # u-3's empty web traits hold nothing
        "profile": 2,
        "source:crm": 1,
        "namespace:user_id": 2,
        "namespace:email": 1,
    }
    # an erasure leaves them all too
    await world.send("web-events", erase_event("user", "user_id", "u-3", "r-1"))
    assert await world.counts() == {"profile": 1, "namespace:user_id": 1}
    assert await world.counts() == tally(decode_state(raw) for raw in world.store.states.values())


@pytest.mark.anyio
async def test_a_merge_counts_the_person_once(world: World) -> None:
    await world.send("web-events", order(anonymousId="a-1"))
    await world.send("crm-events", identify({"userId": "u-1"}, email="ada@x.io"))
    assert (await world.counts())["profile"] == 2
    await world.send("web-events", order(userId="u-1", anonymousId="a-1"))  # login: merge
    expected = {
        "profile": 1,
        "source:crm": 1,
        "namespace:user_id": 1,
        "namespace:email": 1,
        "namespace:anonymous_id": 1,
    }
    assert await world.counts() == expected
    world.ms += 2 * TTL  # the survivor is kept for good; the merged-away one left
    assert await world.counts() == expected


@pytest.mark.anyio
async def test_a_source_s_fields_delete_leaves_that_source_only(world: World) -> None:
    await world.send("web-events", identify({"userId": "u-1"}, plan="pro"))
    await world.send("crm-events", identify({"userId": "u-1"}, tier="gold"))
    await world.send("web-events", {"type": "delete", "userId": "u-1"})
    assert await world.counts() == {"profile": 1, "source:crm": 1, "namespace:user_id": 1}


@pytest.mark.anyio
async def test_an_anonymous_profile_leaves_the_counts_when_its_keys_expire(world: World) -> None:
    await world.send("web-events", identify({"anonymousId": "a-1"}, plan="free"))
    await world.send("web-events", order(userId="u-1"))
    assert await world.counts() == {
        "profile": 2,
        "source:web": 1,
        "namespace:anonymous_id": 1,
        "namespace:user_id": 1,
    }
    world.ms += TTL - 1
    await world.send("web-events", order(anonymousId="a-1"))  # activity moves the deadline
    world.ms += TTL - 1
    assert (await world.counts())["profile"] == 2
    world.ms += 1  # idle for its whole lifetime: Redis deletes its keys now, with no write
    assert await world.counts() == {"profile": 1, "namespace:user_id": 1}


@pytest.mark.anyio
async def test_an_anonymous_profile_linked_to_a_user_moves_to_the_kept_counts(
    world: World,
) -> None:
    await world.send("web-events", order(anonymousId="a-1"))
    await world.send("web-events", {"type": "identify", "userId": "u-9", "anonymousId": "a-1"})
    world.ms += 2 * TTL
    assert await world.counts() == {
        "profile": 1,
        "namespace:anonymous_id": 1,
        "namespace:user_id": 1,
    }


@pytest.mark.anyio
async def test_a_profile_stored_before_counting_is_counted_at_its_next_write(
    world: World,
) -> None:
    await world.send("web-events", identify({"userId": "u-1"}, plan="pro"))
    key = ("user", "u-1")
    legacy = decode_state(world.store.states[key])
    legacy.counted = None  # as a state encoded before the field existed decodes
    world.store.states[key] = encode_state(legacy)
    world.store.counts.clear()  # the counters start empty on deployment
    assert await world.counts() == {}
    world.processor.forget_renders()
    await world.send("web-events", order(userId="u-1"))
    assert await world.counts() == {"profile": 1, "source:web": 1, "namespace:user_id": 1}
