"""Sources through the worker (`BatchProcessor` + `MemoryProfileStore`): traits kept per
source and merged under the materialised policy, and per-source deletes (a source's
fields, or the whole record kept as a tombstone)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from attributes.events import iso_from_ms
from attributes.policies import DEFAULT_POLICY, MergePolicy
from attributes.profile import ProfileState, Retraction, applied_before, decode_state
from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

WEB, CRM = "web-events", "crm-events"
SOURCES = {WEB: "web", CRM: "crm"}
#: the processing time (epoch s): 2026-11-11T11:00:00Z
NOW_S = 1_794_394_800.0
T0 = int(NOW_S * 1000) - 3_600_000  # an hour before: inside every window
MINUTE = 60_000
BROKER_MS = 1_700_000_000_000


def event(kind: str, mid: str, minute: int, **fields: Any) -> dict[str, Any]:
    """An event `minute` minutes after T0, for user u-1 unless `fields` say otherwise."""
    made: dict[str, Any] = {"type": kind, "messageId": mid}
    made["timestamp"] = iso_from_ms(T0 + minute * MINUTE)
    if "userId" not in fields and "anonymousId" not in fields:
        made["userId"] = "u-1"
    return made | fields


def identify(mid: str, minute: int, **traits: Any) -> dict[str, Any]:
    ids = {k: traits.pop(k) for k in ("userId", "anonymousId") if k in traits}
    return event("identify", mid, minute, traits=traits, **ids)


def order(mid: str, minute: int, revenue: float, **ids: str) -> dict[str, Any]:
    return event(
        "track", mid, minute, event="Order Completed", properties={"revenue": revenue}, **ids
    )


def delete(mid: str, minute: int, **ids: str) -> dict[str, Any]:
    return event("delete", mid, minute, **ids)


class Pipeline:
    """A processor reading two topics bound to the sources `web` and `crm`; `send`
    gives each topic's records the next offsets of its partition 0."""

    def __init__(
        self,
        rules: RuleSet,
        policy: MergePolicy = DEFAULT_POLICY,
        retractions: Mapping[str, Retraction] | None = None,
    ) -> None:
        self.store = MemoryProfileStore()
        self.dead_letters = ListDeadLetters()
        self.processor = BatchProcessor(
            rules,
            self.store,
            self.dead_letters,
            clock=lambda: NOW_S,
            sources=SOURCES,
            policy=policy,
            retractions=retractions,
            trust=trusting(*SOURCES.values()),
        )
        self.offsets = {WEB: 0, CRM: 0}
        self.sent: list[Record] = []

    def records(self, *items: tuple[str, dict[str, Any]]) -> list[Record]:
        made = []
        for topic, value in items:
            offset = self.offsets[topic]
            self.offsets[topic] += 1
            made.append(Record(topic, 0, offset, orjson.dumps(value), BROKER_MS + offset))
        return made

    async def send(self, *items: tuple[str, dict[str, Any]]) -> BatchReport:
        batch = self.records(*items)
        self.sent += batch
        report = await self.processor.process(batch)
        assert self.dead_letters.records == []
        return report

    async def view(self, index: str = "id", value: str = "u-1") -> Any:
        raw = await self.store.read_view("user", index, value)
        return None if raw is None else orjson.loads(raw)

    def state(self, pid: str = "u-1") -> ProfileState:
        return decode_state(self.store.states[("user", pid)])


@pytest.fixture
def pipeline(example_rules: RuleSet) -> Pipeline:
    return Pipeline(example_rules, retractions={"crm": "record"})


async def feed_both(pipeline: Pipeline) -> None:
    """web says plan=free at minute 1 and name at 2; crm says plan=pro at 3 and orders."""
    await pipeline.send(
        (WEB, identify("w-1", 1, plan="free", name="Ann", anonymousId="a-1", userId="u-1")),
        (CRM, identify("c-1", 3, plan="pro", tier="gold")),
        (CRM, order("c-2", 4, 30.0)),
        (WEB, identify("w-2", 2, name="Ann B.")),
    )


# --- traits per source, merged under the policy ---------------------------------------------


async def test_traits_of_two_sources_are_kept_apart_and_merged_by_event_time(
    example_rules: RuleSet,
) -> None:
    pipeline = Pipeline(example_rules)
    await feed_both(pipeline)
    assert pipeline.state().source_traits == {
        "web": {
            "plan": [T0 + MINUTE, "w-1", "free"],
            "name": [T0 + 2 * MINUTE, "w-2", "Ann B."],
        },
        "crm": {"plan": [T0 + 3 * MINUTE, "c-1", "pro"], "tier": [T0 + 3 * MINUTE, "c-1", "gold"]},
    }
    view = await pipeline.view()
    assert view["traits"] == {"plan": "pro", "name": "Ann B.", "tier": "gold"}
    assert view["attributes"]["lifetime_value"] == 30.0
    # a newer web value wins back, though it arrives later than crm's
    await pipeline.send((WEB, identify("w-3", 5, plan="trial")))
    assert (await pipeline.view())["traits"]["plan"] == "trial"
    # an older crm value changes crm's fragment only if newer than crm's own
    await pipeline.send((CRM, identify("c-3", 0, plan="stale", tier="silver")))
    assert pipeline.state().source_traits["crm"]["plan"][2] == "pro"
    assert (await pipeline.view())["traits"] == {"plan": "trial", "name": "Ann B.", "tier": "gold"}


async def test_an_unbound_topic_is_its_own_source(example_rules: RuleSet) -> None:
    pipeline = Pipeline(example_rules)
    record = Record("other", 0, 0, orjson.dumps(identify("o-1", 1, plan="x")), BROKER_MS)
    await pipeline.processor.process([record])
    assert pipeline.state().source_traits == {"other": {"plan": [T0 + MINUTE, "o-1", "x"]}}


@pytest.mark.parametrize(
    ("sources", "traits"),
    [
        (["web", "crm"], {"plan": "free", "name": "Ann B.", "tier": "gold"}),
        (["crm", "web"], {"plan": "pro", "name": "Ann B.", "tier": "gold"}),
        (["web"], {"plan": "free", "name": "Ann B."}),
    ],
)
async def test_a_source_precedence_default_is_what_the_view_materialises(
    example_rules: RuleSet, sources: list[str], traits: dict[str, Any]
) -> None:
    policy = MergePolicy(kind="source_precedence", sources=sources)
    pipeline = Pipeline(example_rules, policy=policy)
    await feed_both(pipeline)
    view = await pipeline.view()
    assert view["traits"] == traits
    # the state keeps every source's fragments, listed or not: other policies need them
    assert set(pipeline.state().source_traits) == {"web", "crm"}
    assert view["attributes"]["lifetime_value"] == 30.0  # every source's events count


# --- delete: a source's fields ---------------------------------------------------------------


async def test_a_fields_delete_removes_only_that_source_s_traits(example_rules: RuleSet) -> None:
    pipeline = Pipeline(example_rules)  # no retractions: every source deletes its fields
    await feed_both(pipeline)
    before = await pipeline.view()
    report = await pipeline.send((CRM, delete("c-9", 6)))
    assert report.profiles_written == 1
    after = await pipeline.view()
    assert pipeline.state().source_traits == {
        "web": {
            "plan": [T0 + MINUTE, "w-1", "free"],
            "name": [T0 + 2 * MINUTE, "w-2", "Ann B."],
        }
    }
    assert after["traits"] == {"plan": "free", "name": "Ann B."}  # plan falls back to web's
    assert after["attributes"] == before["attributes"]  # crm's order still counts
    assert after["identities"] == before["identities"]
    assert (after["first_seen"], after["last_seen"]) == (before["first_seen"], before["last_seen"])
    assert after["version"] == before["version"] + 1
    # crm may say something again afterwards
    await pipeline.send((CRM, identify("c-10", 7, tier="platinum")))
    assert (await pipeline.view())["traits"]["tier"] == "platinum"


async def test_a_fields_delete_of_a_source_with_record_deletes_elsewhere_is_fields(
    pipeline: Pipeline,
) -> None:
    await feed_both(pipeline)
    await pipeline.send((WEB, delete("w-9", 6)))  # crm deletes records; web its fields
    view = await pipeline.view()
    assert view["traits"] == {"plan": "pro", "tier": "gold"}
    assert set(pipeline.state().source_traits) == {"crm"}


async def test_a_fields_delete_of_an_unknown_profile_makes_no_profile(
    example_rules: RuleSet,
) -> None:
    pipeline = Pipeline(example_rules)
    await pipeline.send((CRM, delete("c-1", 1, userId="u-9")))
    assert await pipeline.view("user_id", "u-9") is None


# --- delete: the whole record ----------------------------------------------------------------


async def test_a_record_delete_leaves_a_tombstone_without_a_view(pipeline: Pipeline) -> None:
    await feed_both(pipeline)
    version = (await pipeline.view())["version"]
    await pipeline.send((CRM, delete("c-9", 6)))
    for index, value in (("id", "u-1"), ("user_id", "u-1"), ("anonymous_id", "a-1")):
        assert await pipeline.view(index, value) is None
    assert await pipeline.store.read_profiles("user", [("id", "u-1"), ("user_id", "u-1")]) == [
        None,
        None,
    ]
    state = pipeline.state()
    assert state.deleted
    assert state.identities == {"user_id": ["u-1"], "anonymous_id": ["a-1"]}
    assert all(applied_before(state, f"{topic}/0", o) for topic, o in [(WEB, 1), (CRM, 2)])
    assert (state.source_traits, state.attributes) == ({}, {})
    assert (state.first_seen, state.last_seen) == (0, 0)
    assert state.version == version + 1
    # its identities still point to it
    assert pipeline.store.index[("user", "anonymous_id", "a-1")] == "u-1"


async def test_replaying_the_records_before_a_record_delete_changes_nothing(
    pipeline: Pipeline,
) -> None:
    await feed_both(pipeline)
    await pipeline.send((CRM, delete("c-9", 6)))
    stored = pipeline.store.states[("user", "u-1")]
    replayed = list(pipeline.sent)
    report = await pipeline.processor.process(replayed)
    assert (report.duplicates, report.profiles_written) == (len(replayed), 0)
    assert pipeline.store.states[("user", "u-1")] == stored
    assert await pipeline.view() is None


async def test_a_record_delete_unschedules_the_profile_s_windows(pipeline: Pipeline) -> None:
    await pipeline.send((CRM, order("c-1", 1, 10.0)))
    assert "u-1" in pipeline.store.expiries[("user", f"{CRM}/0")]
    await pipeline.send((CRM, delete("c-2", 2)))
    assert "u-1" not in pipeline.store.expiries[("user", f"{CRM}/0")]


async def test_an_expiry_round_does_not_bring_a_tombstone_back(pipeline: Pipeline) -> None:
    await pipeline.send((WEB, order("w-1", 1, 10.0)))  # scheduled under web's partition
    assert "u-1" in pipeline.store.expiries[("user", f"{WEB}/0")]
    await pipeline.send((CRM, delete("c-9", 2)))  # the delete comes through crm's
    version = pipeline.state().version
    pipeline.processor.clock = lambda: NOW_S + 365 * 86_400  # every window has moved
    await pipeline.processor.expire(f"{WEB}/0", 100)
    assert await pipeline.view() is None
    assert pipeline.state().deleted
    assert pipeline.state().version == version
    assert "u-1" not in pipeline.store.expiries[("user", f"{WEB}/0")]


async def test_an_event_after_a_record_delete_starts_a_fresh_profile(pipeline: Pipeline) -> None:
    await feed_both(pipeline)
    await pipeline.send((CRM, delete("c-9", 6)))
    tombstone = pipeline.state().version
    await pipeline.send((WEB, event("page", "w-5", 8)), (WEB, identify("w-6", 9, plan="new")))
    view = await pipeline.view("anonymous_id", "a-1")
    assert view is not None
    assert view["id"] == "u-1"
    assert view["traits"] == {"plan": "new"}
    assert view["attributes"]["page_views"] == 1
    assert view["attributes"]["lifetime_value"] == 0  # the order before the delete is gone
    assert view["attributes"]["purchase_count"] == 0
    assert view["first_seen"] == iso_from_ms(T0 + 8 * MINUTE)
    assert view["last_seen"] == iso_from_ms(T0 + 9 * MINUTE)
    assert view["version"] == tombstone + 2
    assert not pipeline.state().deleted


async def test_a_record_delete_within_a_batch_drops_only_what_came_before(
    pipeline: Pipeline,
) -> None:
    await pipeline.send(
        (CRM, identify("c-1", 1, plan="pro")),
        (CRM, order("c-2", 2, 30.0)),
        (CRM, delete("c-3", 3)),
        (WEB, order("w-1", 4, 5.0)),
    )
    view = await pipeline.view()
    assert view["traits"] == {}
    assert view["attributes"]["lifetime_value"] == 5.0
    assert view["attributes"]["purchase_count"] == 1
    assert view["first_seen"] == iso_from_ms(T0 + 4 * MINUTE)


# --- stitching with a tombstone -------------------------------------------------------------


async def test_a_deleted_profile_merged_into_a_live_one_brings_only_identities(
    pipeline: Pipeline,
) -> None:
    await pipeline.send(
        (CRM, identify("c-1", 1, plan="pro", anonymousId="a-7")),
        (CRM, order("c-2", 2, 99.0, anonymousId="a-7")),
    )
    await pipeline.send((CRM, delete("c-3", 3, anonymousId="a-7")))
    assert pipeline.state("anonymous_id:a-7").deleted
    await pipeline.send((WEB, identify("w-1", 4, name="Ann")), (WEB, order("w-2", 5, 10.0)))
    live = await pipeline.view()
    tombstone = pipeline.state("anonymous_id:a-7")

    report = await pipeline.send((WEB, identify("w-3", 6, userId="u-1", anonymousId="a-7")))
    assert report.merges == 1
    merged = await pipeline.view("anonymous_id", "a-7")
    assert merged == await pipeline.view()
    assert merged["identities"] == {"user_id": ["u-1"], "anonymous_id": ["a-7"]}
    assert merged["traits"] == {"name": "Ann"}
    assert merged["attributes"] == live["attributes"]  # not the deleted profile's order
    assert (merged["first_seen"], merged["last_seen"]) == (
        live["first_seen"],
        iso_from_ms(T0 + 6 * MINUTE),
    )
    assert merged["version"] == live["version"] + tombstone.version + 1
    state = pipeline.state()
    assert applied_before(state, f"{CRM}/0", 2)  # the tombstone's offsets came along
    assert ("user", "anonymous_id:a-7") not in pipeline.store.states


async def test_a_live_profile_merged_into_a_deleted_one_revives_it_with_its_own_data(
    pipeline: Pipeline,
) -> None:
    await pipeline.send((CRM, identify("c-1", 1, plan="pro")), (CRM, order("c-2", 2, 99.0)))
    await pipeline.send((CRM, delete("c-3", 3)))
    await pipeline.send(
        (WEB, identify("w-1", 4, name="Ann", anonymousId="a-8")),
        (WEB, order("w-2", 5, 10.0, anonymousId="a-8")),
    )
    await pipeline.send((WEB, event("page", "w-3", 6, userId="u-1", anonymousId="a-8")))
    view = await pipeline.view()
    assert view["identities"] == {"user_id": ["u-1"], "anonymous_id": ["a-8"]}
    assert view["traits"] == {"name": "Ann"}
    assert view["attributes"]["lifetime_value"] == 10.0
    assert view["attributes"]["page_views"] == 1
    assert view["first_seen"] == iso_from_ms(T0 + 4 * MINUTE)
    assert not pipeline.state().deleted
