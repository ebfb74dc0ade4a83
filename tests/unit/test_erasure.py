"""Erasure by identity through the worker (`BatchProcessor` + `MemoryProfileStore`):
everything of the profile goes, audience sizes follow, tombstones keep a replay from
bringing the person back and hold no personal data; and the pure parts
(`attributes.erasure`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.admission import Admission
from attributes.erasure import (
    decode_tombstone,
    erase_event,
    erase_target,
    erased_before,
    identity_digest,
    identity_of_profile_id,
    tombstone_of,
)
from attributes.events import InvalidEvent, decode_event
from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.limits import EventLimits
from attributes.profile import ProfileState
from attributes.rules import parse_rules
from attributes.ruleset import RuleSet
from streams.erasures import erase_segments
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore

NOW = 1_794_394_800_000
TTL = 3_600_000
PROFILES = "profile-changes"

RULES = parse_rules(
    """\
attributes:
  - name: orders
    function: count
    event: Order
  - name: recent_orders
    function: count
    event: Order
    lookback: {count: 7, unit: days}
audiences:
  - name: buyers
    condition: orders > 0
""",
    "rules.yaml",
)


class World:
    """A processor over topics `a` and `b` (partition 0 each), with an anonymous TTL and
    a profile-change topic; `send` gives each topic's records its next offsets, and
    `replay` delivers records sent before again, at their own offsets."""

    def __init__(self, rules: RuleSet = RULES) -> None:
        self.store = MemoryProfileStore(clock=lambda: NOW)
        self.dead = ListDeadLetters()
        self.processor = BatchProcessor(
            rules,
            self.store,
            self.dead,
            clock=lambda: NOW / 1000,
            anonymous_ttl_ms=TTL,
            profile_topic=PROFILES,
            trust=trusting("a", "b"),
        )
        self.offsets = {"a": 0, "b": 0}
        self.sent: list[Record] = []

    async def send(self, *items: tuple[str, dict[str, Any]]) -> Any:
        batch = []
        for topic, body in items:
            batch.append(Record(topic, 0, self.offsets[topic], orjson.dumps(body), NOW))
            self.offsets[topic] += 1
        self.sent += batch
        return await self.processor.process(batch)

    async def replay(self) -> Any:
        self.processor.forget_renders()
        return await self.processor.process(list(self.sent))

    async def view(self, index: str, value: str) -> Any:
        raw = await self.store.read_view("user", index, value)
        return None if raw is None else orjson.loads(raw)


def order(mid: str, **ids: str) -> dict[str, Any]:
    return {"type": "track", "event": "Order", "messageId": mid, **ids}


def erase(kind: str, value: str, request: str = "r-1") -> dict[str, Any]:
    return erase_event("user", kind, value, request)


def everything(store: MemoryProfileStore) -> str:
    """Every key and value the store holds, as one text to search for personal data."""
    parts: list[Any] = [
        store.states,
        store.views,
        store.versions,
        store.index,
        store.records,
        store.expiries,
        store.tombstone_keys,
        store.erasures,
        store.ttls,
        store.expiring,
    ]
    return repr(parts)


@pytest.mark.anyio
async def test_an_erase_removes_every_key_and_leaves_tombstones_without_personal_data() -> None:
    world = World()
    await world.send(
        ("a", order("m1", userId="u-1", anonymousId="a-1")),
        ("a", {"type": "identify", "userId": "u-1", "traits": {"email": "Ada@X.io"}}),
        ("a", order("m2", userId="u-2")),
    )
    assert await world.store.audience_sizes("user") == {"buyers": 2}
    assert world.store.expiries[("user", "a/0")].keys() == {"u-1", "u-2"}
    report = await world.send(("b", erase("email", " ada@x.io ")))
    assert report.erasures == 1
    store = world.store
    assert ("user", "u-1") not in store.states
    assert ("user", "u-1") not in store.views
    assert ("user", "u-1") not in store.versions
    assert [key for key in store.index if key[2] in ("u-1", "a-1", "ada@x.io")] == []
    assert "u-1" not in store.expiries[("user", "a/0")]
    assert await store.audience_sizes("user") == {"buyers": 1}
    assert await world.view("user_id", "u-2") is not None
    # what is left of the person: three tombstones, keyed by digests, and the status
    text = everything(store)
    for personal in ("u-1", "a-1", "ada@x.io", "Ada"):
        assert personal not in text
    digests = {identity_digest("user", *i) for i in [("user_id", "u-1"), ("email", "ada@x.io")]}
    assert digests <= {digest for _, digest in store.tombstone_keys}
    tombstone = decode_tombstone(
        store.tombstone_keys[("user", identity_digest("user", "user_id", "u-1"))]
    )
    assert tombstone.offsets.get("b/0", -1) >= 0 or 0 in tombstone.recent.get("b/0", [])
    assert erased_before(tombstone, "a/0", 1)
    status = orjson.loads(store.erasures["r-1"])
    assert status["status"] == "applied"
    assert status["found"] is True
    # the profile-change stream gets a tombstone for the erased profile
    assert any(o.key == b"u-1" and o.value is None for o in store.outboxes["b/0"])


@pytest.mark.anyio
async def test_a_replay_of_the_topic_does_not_bring_the_person_back() -> None:
    world = World()
    await world.send(("a", order("m1", userId="u-1")), ("b", order("m2", userId="u-1")))
    await world.send(("a", order("m3", userId="u-2")))
    await world.send(("a", erase("user_id", "u-1")))
    before = dict(world.store.views)
    report = await world.replay()
    assert report.profiles_written == 0
    assert await world.view("user_id", "u-1") is None
    assert world.store.views == before
    assert await world.store.audience_sizes("user") == {"buyers": 1}


@pytest.mark.anyio
async def test_a_later_event_starts_afresh_and_a_replay_keeps_the_old_events_out() -> None:
    world = World()
    await world.send(("a", order("m1", userId="u-1")), ("b", order("m2", userId="u-1")))
    await world.send(("a", erase("user_id", "u-1")))
    await world.send(("b", order("m3", userId="u-1")))  # after the erase: a new person
    assert (await world.view("user_id", "u-1"))["attributes"]["orders"] == 1
    # old events of both partitions come again: the new profile does not take them
    await world.replay()
    assert (await world.view("user_id", "u-1"))["attributes"]["orders"] == 1


@pytest.mark.anyio
async def test_an_erase_in_the_middle_of_a_batch_erases_only_what_came_before() -> None:
    world = World()
    await world.send(
        ("a", order("m1", userId="u-1")),
        ("a", erase("user_id", "u-1")),
        ("a", order("m2", userId="u-1")),
    )
    assert (await world.view("user_id", "u-1"))["attributes"]["orders"] == 1
    assert await world.store.audience_sizes("user") == {"buyers": 1}


@pytest.mark.anyio
async def test_an_erase_of_an_identity_nobody_has_is_applied_and_leaves_a_tombstone() -> None:
    world = World()
    await world.send(("a", erase("email", "nobody@x.io", "r-9")))
    assert orjson.loads(world.store.erasures["r-9"])["found"] is False
    assert world.store.states == {}
    assert world.dead.records == []


@pytest.mark.anyio
async def test_an_erased_anonymous_member_leaves_the_expiring_count() -> None:
    world = World()
    await world.send(("a", order("m1", anonymousId="a-1")))
    assert await world.store.audience_sizes("user") == {"buyers": 1}
    await world.send(("a", erase("anonymous_id", "a-1")))
    assert await world.store.audience_sizes("user") == {"buyers": 0}
    assert ("user", "anonymous_id:a-1") not in world.store.ttls


@pytest.mark.anyio
async def test_an_erase_delivered_again_changes_nothing() -> None:
    world = World()
    await world.send(("a", order("m1", userId="u-1")), ("a", erase("user_id", "u-1")))
    await world.send(("a", order("m2", userId="u-1")))
    report = await world.replay()
    assert report.erasures == 0
    assert (await world.view("user_id", "u-1"))["attributes"]["orders"] == 1


@pytest.mark.anyio
async def test_a_malformed_erase_is_a_dead_letter_with_the_reason() -> None:
    world = World()
    bad = {"type": "erase", "properties": {"entity": "user", "identity": {"type": "shoe"}}}
    await world.send(("a", bad))
    assert len(world.dead.records) == 1
    assert "identity type must be one of" in world.dead.records[0][1]


# --- the pure parts -----------------------------------------------------------------------


def test_erase_target_names_the_entity_and_normalises_the_value() -> None:
    rules = {"user": IdentityRules(DEFAULT_USER)}
    event = decode_event(orjson.dumps(erase("email", " Ada@X.io")))
    assert erase_target(event, rules) == ("user", "email", "ada@x.io")
    for props, problem in [
        ({"entity": "shop"}, "properties.entity"),
        ({"entity": "user"}, "properties.identity"),
        ({"entity": "user", "identity": {"type": "email", "value": " "}}, "non-empty"),
    ]:
        odd = decode_event(orjson.dumps({"type": "erase", "properties": props}))
        with pytest.raises(ValueError, match=problem):
            erase_target(odd, rules)


def test_an_erase_is_claimed_by_its_entity_only() -> None:
    admission = Admission({"user": IdentityRules(DEFAULT_USER)}, EventLimits())
    admitted = admission.admit(orjson.dumps(erase("user_id", "u-1")), now_ms=NOW, fallback_ms=NOW)
    assert [(c.entity, c.identities) for c in admitted.claims] == [("user", [("user_id", "u-1")])]
    with pytest.raises(InvalidEvent):
        admission.admit(
            orjson.dumps({"type": "erase", "userId": "u-1"}), now_ms=NOW, fallback_ms=NOW
        )


def test_a_profile_id_names_the_identity_it_was_made_from() -> None:
    rules = IdentityRules(DEFAULT_USER)
    for kind, value in [("user_id", "u-1"), ("anonymous_id", "a-1"), ("user_id", "x:y")]:
        assert identity_of_profile_id(rules, rules.profile_id(kind, value)) == (kind, value)


def test_a_tombstone_keeps_the_watermarks_of_an_earlier_one() -> None:
    earlier = tombstone_of(ProfileState(id="p", offsets={"q/0": 30}), [], 1)
    state = ProfileState(id="p", offsets={"p/0": 9}, recent={"p/0": [12]})
    tombstone = tombstone_of(state, [earlier], 2)
    assert erased_before(tombstone, "q/0", 30)
    assert erased_before(tombstone, "p/0", 12)
    assert not erased_before(tombstone, "p/0", 11)
    assert tombstone.erased_at == 2


def test_segments_put_every_erase_alone_in_order() -> None:
    class Item:
        def __init__(self, kind: str) -> None:
            self.event = type("E", (), {"type": kind})()

    items: list[Any] = [Item("track"), Item("erase"), Item("erase"), Item("track")]
    segments = erase_segments(items)
    assert [[i.event.type for i in s] for s in segments] == [
        ["track"],
        ["erase"],
        ["erase"],
        ["track"],
    ]
    assert erase_segments(items[:1]) == [items[:1]]
