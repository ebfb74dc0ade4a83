"""Stitching through the worker: the processor-level oracle.

Every aggregator state is merged with its aggregator's merge, so a stitched profile's
computed attributes must be exactly what they would be had all its events arrived
under one id. The oracle: the same records, each rewritten to carry one reference
user id per connected group of identities, through a fresh processor that knows no
identity but `userId`."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.events import decode_event
from attributes.identities import DEFAULT_USER, EntitySpec, IdentityRules, IdentitySpec
from attributes.ruleset import RuleSet
from attributes.stitching import Identity
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.unit.event_strategies import orders, product_views
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore
from traitflow.store import Conflict, Expected, ProfileStore, ProfileWrite

pytestmark = pytest.mark.anyio

TOPIC = "events"
BROKER_MS = 1_700_000_000_000
#: the processing time (epoch s): 2026-11-11T11:00:00Z
NOW_S = 1_794_394_800.0

USER = IdentityRules(DEFAULT_USER)
#: the oracle's identities: a reference user id, nothing else (an email is a trait)
REFERENCE = IdentityRules(
    EntitySpec(identities=[IdentitySpec(type="user_id", paths=["userId"], limit=1)])
)


def clock() -> float:
    return NOW_S


def record(value: dict[str, Any], offset: int, partition: int = 0) -> Record:
    return Record(TOPIC, partition, offset, orjson.dumps(value), BROKER_MS + offset)


def memory(store: ProfileStore) -> MemoryProfileStore:
    inner = store.inner if isinstance(store, CachedProfileStore) else store
    assert isinstance(inner, MemoryProfileStore)
    return inner


async def process(
    rules: RuleSet,
    batches: Sequence[Sequence[Record]],
    store: ProfileStore | None = None,
    identities: IdentityRules | None = None,
) -> tuple[ProfileStore, list[BatchReport]]:
    store = MemoryProfileStore() if store is None else store
    dead_letters = ListDeadLetters()
    processor = BatchProcessor(
        rules, store, dead_letters, clock=clock, identities=identities, trust=trusting(TOPIC)
    )
    reports = [await processor.process(batch) for batch in batches]
    assert dead_letters.records == []
    return store, reports


async def view(store: ProfileStore, index: str, value: str) -> Any:
    raw = await store.read_view("user", index, value)
    return None if raw is None else orjson.loads(raw)


def served(document: Any) -> bytes:
    """What a view serves besides who it is: attributes (in rule order, 10 and 10.0
    apart), traits (in any order: a merge lists the absorbed profile's after the
    survivor's), times and version."""
    keys = ("attributes", "first_seen", "last_seen", "version")
    shown = {key: document[key] for key in keys}
    shown["traits"] = dict(sorted(document["traits"].items()))
    return orjson.dumps(shown)


# --- components: which identities the events connect ------------------------------------------


class Components:
    """Union-find over identities."""

    def __init__(self) -> None:
        self.parent: dict[Identity, Identity] = {}

    def find(self, identity: Identity) -> Identity:
        self.parent.setdefault(identity, identity)
        while self.parent[identity] != identity:
            self.parent[identity] = self.parent[self.parent[identity]]
            identity = self.parent[identity]
        return identity

    def union(self, identities: Sequence[Identity]) -> None:
        roots = [self.find(identity) for identity in identities]
        for root in roots[1:]:
            self.parent[root] = roots[0]

    def groups(self) -> dict[Identity, set[Identity]]:
        found: dict[Identity, set[Identity]] = {}
        for identity in self.parent:
            found.setdefault(self.find(identity), set()).add(identity)
        return found


@dataclass
class Reference:
    """The oracle's records, and each group of identities with its reference id."""

    records: list[Record]
    groups: dict[str, set[Identity]]


def reference(records: Sequence[Record]) -> Reference:
    """Connect the identities each event carries. An alias's previousId is the first of
    its alias types that an earlier event (or this one, first) has made known, else the
    last: as the spec says, which type a previousId is depends on what exists."""
    components = Components()
    known: set[Identity] = set()
    firsts: list[Identity] = []
    for rec in records:
        assert rec.value is not None
        event = decode_event(rec.value)
        ids = USER.extract(event)
        candidates = USER.previous(event)
        named = [c for c in candidates if c in known or c == ids[0]]
        previous = named[:1] or candidates[-1:]
        components.union([*ids, *previous])
        known.update([*ids, *previous])
        firsts.append(ids[0])
    roots = {root: f"ref-{n}" for n, root in enumerate(components.groups())}
    rewritten = []
    for rec, first in zip(records, firsts, strict=True):
        assert rec.value is not None
        value = orjson.loads(rec.value)
        for key in ("userId", "anonymousId", "previousId"):
            value.pop(key, None)
        value["userId"] = roots[components.find(first)]
        rewritten.append(
            Record(rec.topic, rec.partition, rec.offset, orjson.dumps(value), rec.timestamp_ms)
        )
    groups = {roots[root]: members for root, members in components.groups().items()}
    return Reference(rewritten, groups)


async def check_against_the_oracle(rules: RuleSet, stitched: ProfileStore, ref: Reference) -> None:
    oracle, _ = await process(rules, [ref.records], identities=REFERENCE)
    for name, members in ref.groups.items():
        expected = await view(oracle, "user_id", name)
        assert expected is not None
        views = [await view(stitched, kind, value) for kind, value in sorted(members)]
        first = views[0]
        assert first is not None, (name, members)
        assert all(other == first for other in views), "identities of one group disagree"
        assert served(first) == served(expected), sorted(members)
        held = {(kind, value) for kind, values in first["identities"].items() for value in values}
        assert held == members
        best = min(USER.rank[kind] for kind, _ in members)
        assert USER.id_rank(first["id"]) == best
        users = [value for kind, value in members if kind == "user_id"]
        if users:
            assert first["id"] == USER.profile_id("user_id", users[0])
    # nothing else: no profile left over from a merge, no identity pointing elsewhere
    store = memory(stitched)
    assert len(store.views) == len(ref.groups)
    assert len(store.index) == sum(len(members) for members in ref.groups.values())


# --- random people, random events -------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    user: str
    emails: tuple[str, ...]
    devices: tuple[str, ...]


@st.composite
def people(draw: st.DrawFn) -> list[Person]:
    """1-3 people, each with a user id, up to 2 emails and up to 3 anonymous ids, all
    distinct: within the default user's limits, so nothing is ever refused."""
    found = []
    for p in range(draw(st.integers(1, 3))):
        emails = tuple(f"p{p}-{k}@x.io" for k in range(draw(st.integers(0, 2))))
        devices = tuple(f"a-{p}-{k}" for k in range(draw(st.integers(0, 3))))
        found.append(Person(f"u-{p}", emails, devices))
    return found


bodies = st.one_of(
    orders(["sku-1", "sku-2"], [{}, {"currency": "EUR"}]),
    product_views(["books", "garden"], ["sku-1", "sku-2"]),
    st.builds(
        lambda plan: {"type": "identify", "traits": {"plan": plan}},
        st.sampled_from(["free", "pro"]),
    ),
    st.just({"type": "page"}),
    st.just({"type": "alias"}),
)


def stamp(day: int, hour: int) -> str:
    """An event time on day `day` of November 2026 (0 and below: in October)."""
    moment = datetime(2026, 11, 1, hour, tzinfo=UTC) + timedelta(days=day - 1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


#: event time: none (the record's, in 2023: outside every window), the last day (inside
#: every window and the 7-day one's lateness), or any day of the last month and a half
times = st.one_of(
    st.none(),
    st.builds(stamp, st.just(11), st.integers(0, 10)),
    st.builds(stamp, st.integers(-20, 11), st.integers(0, 10)),
)


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of random people. In the first half, each carries one of its person's
    identities, so that profiles gather state apart; later ones a random non-empty set
    of them (an email only on identify events), linking those profiles. Aliases name
    one of the person's ids as previousId."""
    persons = draw(people())
    events = []
    count = draw(st.integers(0, 30))
    for n in range(count):
        person = draw(st.sampled_from(persons))
        body = dict(draw(bodies))
        value: dict[str, Any] = {**body, "messageId": f"m-{n:03d}"}
        emails = person.emails if body["type"] == "identify" else ()
        if n < count // 2:
            kind, chosen = draw(
                st.sampled_from(
                    [
                        ("userId", person.user),
                        *(("email", email) for email in emails),
                        *(("anonymousId", device) for device in person.devices),
                    ]
                )
            )
            if kind == "email":
                value["traits"] = {**body["traits"], "email": chosen}
            else:
                value[kind] = chosen
        else:
            if draw(st.booleans()):
                value["userId"] = person.user
            if draw(st.booleans()) and emails:
                value["traits"] = {**body["traits"], "email": draw(st.sampled_from(emails))}
            if draw(st.booleans()) and person.devices:
                value["anonymousId"] = draw(st.sampled_from(person.devices))
            if not {"userId", "anonymousId"} & value.keys() and "email" not in value.get(
                "traits", {}
            ):
                value["userId"] = person.user
        if body["type"] == "alias":
            previous = [*person.devices, person.user]
            if previous:
                value["previousId"] = draw(st.sampled_from(previous))
        when = draw(times)
        if when is not None:
            value["timestamp"] = when
        events.append(value)
    return events


def to_records(data: st.DataObject, events: Sequence[dict[str, Any]]) -> list[Record]:
    """Each event on a random partition of three, offsets rising per partition (with gaps)."""
    next_offset = [0, 0, 0]
    out = []
    for value in events:
        partition = data.draw(st.integers(0, 2))
        out.append(record(value, next_offset[partition], partition))
        next_offset[partition] += data.draw(st.integers(1, 3))
    return out


def split(data: st.DataObject, records: list[Record]) -> list[list[Record]]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=6)))
    return [records[a:b] for a, b in itertools.pairwise([0, *cuts, len(records)])]


@settings(max_examples=100, deadline=None)
@given(events=streams(), data=st.data(), cache=st.sampled_from([None, 0, 1, 100]))
def test_stitched_profiles_equal_one_id_per_person(
    example_rules: RuleSet, events: list[dict[str, Any]], data: st.DataObject, cache: int | None
) -> None:
    """Random people, random links, random batches (through the worker's state cache
    too): every group of connected identities is one profile, read the same by each of
    its identities, serving exactly what one id fed all of its events serves."""
    records = to_records(data, events)
    batches = split(data, records)
    ref = reference(records)

    async def go() -> None:
        store = None if cache is None else CachedProfileStore(MemoryProfileStore(), cache)
        stitched, reports = await process(example_rules, batches, store)
        assert [refusal for report in reports for refusal in report.refusals] == []
        await check_against_the_oracle(example_rules, stitched, ref)

    asyncio.run(go())


@settings(max_examples=50, deadline=None)
@given(events=streams(), data=st.data())
def test_replaying_any_batch_changes_nothing(
    example_rules: RuleSet, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """At-least-once delivery: records already applied, replayed in any batches, are
    duplicates, and leave states, views and index as they were, aliases included."""
    records = to_records(data, events)

    async def go() -> None:
        stitched, _ = await process(example_rules, split(data, records))
        store = memory(stitched)
        before = (dict(store.states), dict(store.views), dict(store.index))
        start = data.draw(st.integers(0, len(records)))
        replayed = records[start:]
        _, reports = await process(example_rules, split(data, replayed), stitched)
        assert sum(report.duplicates for report in reports) == len(replayed)
        assert sum(report.profiles_written for report in reports) == 0
        assert (store.states, store.views, store.index) == before

    asyncio.run(go())


class SpuriousConflicts(MemoryProfileStore):
    """Finds some of a commit's checks failed though nothing changed (`pick` chooses
    which): the processor must commit the parts of the batch that read none of them
    and compute the others again, with the very same outcome."""

    def __init__(self, pick: Any) -> None:
        super().__init__()
        self.pick = pick
        self.conflicts = 0

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        checks: list[Identity | str] = (
            [] if expected is None else [*expected.pointers, *expected.versions]
        )
        named = self.pick(checks) if checks and self.conflicts < 50 else []
        if named:
            self.conflicts += 1
            pointers = [check for check in named if isinstance(check, tuple)]
            raise Conflict(pointers, [check for check in named if isinstance(check, str)])
        await super().commit(entity, writes, removed=removed, expected=expected)


def totals(reports: Sequence[BatchReport]) -> tuple[int, ...]:
    fields = ("records", "profiles_written", "dead_lettered", "duplicates", "merges")
    counted = tuple(sum(getattr(report, name) for report in reports) for name in fields)
    return (*counted, sum(len(r.skips) for r in reports), sum(len(r.refusals) for r in reports))


@settings(max_examples=100, deadline=None)
@given(events=streams(), data=st.data(), cache=st.sampled_from([None, 100]))
def test_a_conflict_redoes_only_the_parts_that_read_what_changed(
    example_rules: RuleSet, events: list[dict[str, Any]], data: st.DataObject, cache: int | None
) -> None:
    """Random checks of random commits fail: what is stored, and every figure reported,
    is exactly what the same batches store and report without a conflict."""
    records = to_records(data, events)
    batches = split(data, records)

    def pick(checks: list[Identity | str]) -> list[Identity | str]:
        return data.draw(st.lists(st.sampled_from(checks), max_size=3))

    async def go() -> None:
        calm, calm_reports = await process(example_rules, batches)
        conflicted = SpuriousConflicts(pick)
        store = conflicted if cache is None else CachedProfileStore(conflicted, cache)
        _, reports = await process(example_rules, batches, store)
        assert sum(report.conflicts for report in reports) == conflicted.conflicts
        assert totals(reports) == totals(calm_reports)
        calm = memory(calm)
        assert conflicted.index == calm.index
        assert conflicted.versions == calm.versions
        for key, raw in calm.views.items():
            assert served(orjson.loads(conflicted.views[key])) == served(orjson.loads(raw))
        assert conflicted.views.keys() == calm.views.keys()

    asyncio.run(go())


# --- cases ------------------------------------------------------------------------------------


def order(mid: str, revenue: Any, when: str, **ids: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": mid,
        "timestamp": when,
        "properties": {"revenue": revenue, "product_id": f"sku-{mid}", "currency": "EUR"},
        **ids,
    }


def viewed(mid: str, category: str, when: str, **ids: str) -> dict[str, Any]:
    properties = {"category": category, "product_id": f"sku-{mid}"}
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": mid,
        "timestamp": when,
        "properties": properties,
        **ids,
    }


def identify(mid: str, when: str, traits: dict[str, Any], **ids: str) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "timestamp": when, "traits": traits, **ids}


async def test_profiles_from_earlier_batches_merged_by_a_login_equal_the_oracle(
    example_rules: RuleSet,
) -> None:
    anonymous = [
        viewed("m-1", "books", "2026-11-02T10:00:00Z", anonymousId="a-1"),
        order("m-2", 120.0, "2026-11-03T10:00:00Z", anonymousId="a-1"),
        identify("m-3", "2026-11-04T10:00:00Z", {"plan": "free"}, anonymousId="a-1"),
    ]
    crm = [
        identify("m-4", "2026-11-01T09:00:00Z", {"email": "ada@x.io", "plan": "pro"}),
        order("m-5", 19.99, "2026-11-10T10:00:00Z", userId="u-1"),
    ]
    known = [
        viewed("m-6", "garden", "2026-11-09T10:00:00Z", userId="u-1"),
        identify("m-7", "2026-11-05T10:00:00Z", {"name": "Ada"}, userId="u-1"),
    ]
    login = [
        identify("m-8", "2026-11-11T10:00:00Z", {"email": "ada@x.io"}, anonymousId="a-1"),
        {"type": "page", "messageId": "m-9", "userId": "u-1", "anonymousId": "a-1"},
    ]
    values = [*anonymous, *crm, *known, *login]
    records = [record(value, offset) for offset, value in enumerate(values)]
    batches = [records[:3], records[3:5], records[5:7], records[7:]]
    stitched, reports = await process(example_rules, batches)
    # a-1 and the email were two profiles until m-8, u-1 a third until m-9
    assert [report.merges for report in reports] == [0, 0, 0, 2]
    assert len(memory(stitched).views) == 1
    profile = await view(stitched, "anonymous_id", "a-1")
    assert profile["id"] == "u-1"
    assert await view(stitched, "email", "ada@x.io") == profile
    assert await view(stitched, "user_id", "u-1") == profile
    assert await view(stitched, "id", "anonymous_id:a-1") is None
    assert await view(stitched, "id", "email:ada@x.io") is None
    oracle, _ = await process(example_rules, [reference(records).records], identities=REFERENCE)
    (name,) = reference(records).groups
    expected = await view(oracle, "user_id", name)
    assert served(profile) == served(expected)
    assert profile["attributes"]["lifetime_value"] == 139.99
    assert profile["traits"] == {"plan": "free", "email": "ada@x.io", "name": "Ada"}
    assert profile["version"] == 9
    # and replayed: nothing changes
    store = memory(stitched)
    before = (dict(store.states), dict(store.views), dict(store.index))
    (again,) = (await process(example_rules, [records], stitched))[1]
    assert (again.duplicates, again.profiles_written, again.merges) == (9, 0, 0)
    assert (store.states, store.views, store.index) == before


async def test_a_second_user_on_a_device_is_refused_and_both_stay_whole(
    example_rules: RuleSet,
) -> None:
    values = [
        order("m-1", 10, "2026-11-10T10:00:00Z", userId="u-1", anonymousId="shared"),
        order("m-2", 5, "2026-11-10T10:00:00Z", userId="u-2"),
        order("m-3", 1, "2026-11-10T11:00:00Z", userId="u-2", anonymousId="shared"),
    ]
    stitched, (report,) = await process(
        example_rules, [[record(value, n) for n, value in enumerate(values)]]
    )
    assert [refusal.identity for refusal in report.refusals] == [("anonymous_id", "shared")]
    assert (await view(stitched, "anonymous_id", "shared"))["id"] == "u-1"
    assert (await view(stitched, "user_id", "u-2"))["attributes"]["lifetime_value"] == 6
    assert (await view(stitched, "user_id", "u-1"))["attributes"]["lifetime_value"] == 10


async def test_replaying_an_alias_after_its_previous_id_became_a_user_changes_nothing(
    example_rules: RuleSet,
) -> None:
    values = [
        {"type": "alias", "messageId": "m-1", "anonymousId": "a-1", "previousId": "u-1"},
        {"type": "page", "messageId": "m-2", "userId": "u-1"},
    ]
    records = [record(value, offset) for offset, value in enumerate(values)]
    stitched, _ = await process(example_rules, [records])
    store = memory(stitched)
    # u-1 was no user when the alias came: its previousId was taken as an anonymous id
    assert store.index[("user", "anonymous_id", "u-1")] == "anonymous_id:a-1"
    assert store.index[("user", "user_id", "u-1")] == "u-1"
    before = (dict(store.states), dict(store.views), dict(store.index))
    (report,) = (await process(example_rules, [records], stitched))[1]
    assert report.merges == 0
    assert (store.states, store.views, store.index) == before


async def test_the_surviving_id_does_not_depend_on_batch_boundaries(
    example_rules: RuleSet,
) -> None:
    values = [
        identify("m-1", "2026-11-05T10:00:00Z", {"email": "e2@x.io"}),
        identify("m-2", "2026-11-09T10:00:00Z", {"email": "e1@x.io"}, anonymousId="a-1"),
        identify("m-3", "2026-11-10T10:00:00Z", {"email": "e2@x.io"}, anonymousId="a-1"),
    ]
    records = [record(value, offset) for offset, value in enumerate(values)]
    ids: set[str] = set()
    for batches in ([records[:2], records[2:]], [records], [[rec] for rec in records]):
        stitched, _ = await process(example_rules, batches)
        ids.add((await view(stitched, "anonymous_id", "a-1"))["id"])
    # e2 was seen first, by arrival and by event time
    assert ids == {"email:e2@x.io"}
