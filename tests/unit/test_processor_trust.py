"""Trusted links through the worker: the processor-level oracle with trust levels.

As in `test_processor_stitching.py`, the oracle rewrites every record to carry one
reference user id per group of identities and runs them through a processor that
knows no identity but `userId`. Here the groups come from an independent, sequential
reading of the trust rule (`attributes.stitching`, module docstring) and of the
identity limits, over events from a trusted (`crm`), an authenticated (`app`) and an
untrusted (`web`) source, some of them carrying another person's identity (the
attacks)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.events import decode_event
from attributes.ruleset import RuleSet
from attributes.stitching import Identity, SourceTrust, Trust
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.unit.test_processor_stitching import (
    USER,
    Reference,
    check_against_the_oracle,
    clock,
    split,
    streams,
    to_records,
)
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileStore

SOURCES = {"crm": "crm", "app": "app", "web": "web"}
TRUST = SourceTrust({"crm": Trust.TRUSTED, "app": Trust.AUTHENTICATED})
ANONYMOUS = {"anonymous_id"}


async def process(
    rules: RuleSet, batches: Sequence[Sequence[Record]], trust: SourceTrust = TRUST
) -> tuple[ProfileStore, list[BatchReport]]:
    store, dead_letters = MemoryProfileStore(), ListDeadLetters()
    processor = BatchProcessor(
        rules, store, dead_letters, clock=clock, sources=SOURCES, trust=trust
    )
    reports = [await processor.process(batch) for batch in batches]
    assert dead_letters.records == []
    return store, reports


class Graph:
    """Groups of identities, built event by event as the rule reads."""

    def __init__(self) -> None:
        self.parent: dict[Identity, Identity] = {}

    def find(self, identity: Identity) -> Identity:
        while self.parent[identity] != identity:
            identity = self.parent[identity]
        return identity

    def known(self, identity: Identity) -> bool:
        return identity in self.parent

    def members(self, identity: Identity) -> list[Identity]:
        root = self.find(identity)
        return [other for other in self.parent if self.find(other) == root]

    def fits(self, identities: Sequence[Identity]) -> bool:
        for kind, limit in USER.limits.items():
            if limit is not None and sum(k == kind for k, _ in identities) > limit:
                return False
        return True

    def add(self, identity: Identity) -> None:
        self.parent.setdefault(identity, identity)

    def join(self, target: Identity, identity: Identity) -> None:
        """Link `identity` (new) or merge its group into `target`'s, within the limits."""
        if not self.known(identity):
            if self.fits([*self.members(target), identity]):
                self.parent[identity] = self.find(target)
        elif self.find(identity) != self.find(target) and self.fits(
            [*self.members(target), *self.members(identity)]
        ):
            self.parent[self.find(identity)] = self.find(target)

    def anonymous_only(self, identity: Identity) -> bool:
        return all(kind in ANONYMOUS for kind, _ in self.members(identity))


def reference(records: Sequence[Record]) -> Reference:
    graph = Graph()
    anchors: list[Identity] = []
    for rec in records:
        assert rec.value is not None
        event = decode_event(rec.value)
        ids, candidates = USER.extract(event), USER.previous(event)
        trust = TRUST.of(SOURCES[rec.topic])
        vouched = trust is Trust.AUTHENTICATED and ids[0][0] == "user_id"
        if trust is not Trust.TRUSTED and not vouched:
            devices = [i for i in ids if i[0] in ANONYMOUS]
            ids = devices[:1] + [i for i in ids if i not in devices[:1]]
        anchor = ids[0]
        graph.add(anchor)
        anchors.append(anchor)
        named = [c for c in candidates if graph.known(c)]
        previous = named[:1] or candidates[-1:]
        for identity in [*ids[1:], *previous]:
            may = trust is Trust.TRUSTED or (
                vouched  # an anonymous id no known profile holds
                and identity[0] in ANONYMOUS
                and (not graph.known(identity) or graph.anonymous_only(identity))
            )
            if may:
                graph.join(anchor, identity)
    groups: dict[Identity, set[Identity]] = {}
    for identity in graph.parent:
        groups.setdefault(graph.find(identity), set()).add(identity)
    names = {root: f"ref-{n}" for n, root in enumerate(groups)}
    rewritten = []
    for rec, anchor in zip(records, anchors, strict=True):
        assert rec.value is not None
        value = orjson.loads(rec.value)
        for key in ("userId", "anonymousId", "previousId"):
            value.pop(key, None)
        value["userId"] = names[graph.find(anchor)]
        rewritten.append(
            Record(rec.topic, rec.partition, rec.offset, orjson.dumps(value), rec.timestamp_ms)
        )
    return Reference(rewritten, {names[root]: members for root, members in groups.items()})


@st.composite
def mixed(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """`streams()`'s people and events, each from a random source; some carry another
    person's user id, email or anonymous id in place of their own (a forged one)."""
    events = draw(streams())
    pool: dict[str, list[str]] = {"userId": [], "anonymousId": [], "email": []}
    for value in events:
        for key in ("userId", "anonymousId"):
            if key in value:
                pool[key].append(value[key])
        if "email" in value.get("traits", {}):
            pool["email"].append(value["traits"]["email"])
    out = []
    for value in events:
        if draw(st.integers(0, 3)) == 0:
            present: list[str] = [k for k in ("userId", "anonymousId") if k in value]
            if "email" in value.get("traits", {}):
                present.append("email")
            if present:
                key = draw(st.sampled_from(present))
                forged = draw(st.sampled_from(pool[key]))
                if key == "email":
                    value["traits"] = {**value["traits"], "email": forged}
                else:
                    value[key] = forged
        out.append((draw(st.sampled_from(sorted(SOURCES))), value))
    return out


def to_topic_records(data: st.DataObject, events: list[tuple[str, dict[str, Any]]]) -> list[Record]:
    records = to_records(data, [value for _, value in events])
    return [
        Record(topic, rec.partition, rec.offset, rec.value, rec.timestamp_ms)
        for (topic, _), rec in zip(events, records, strict=True)
    ]


@settings(max_examples=150, deadline=None)
@given(events=mixed(), data=st.data())
def test_stitched_profiles_equal_the_oracle_of_the_trust_rule(
    example_rules: RuleSet, events: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    """Random people, sources, forged identities and batches: every group the rule
    connects is one profile, read the same by each of its identities, serving what one
    id fed all of its events serves; identities the rule refused point nowhere."""
    records = to_topic_records(data, events)
    batches = split(data, records)
    ref = reference(records)

    async def go() -> None:
        stitched, reports = await process(example_rules, batches)
        # the oracle's processor trusts every source: its records link nothing
        await check_against_the_oracle(example_rules, stitched, ref)
        refused = [r for report in reports for r in report.refusals if r.kind != "limit"]
        assert {refusal.source for refusal in refused} <= {"app", "web"}

    asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(events=mixed(), data=st.data())
def test_replaying_events_an_untrusted_source_sent_changes_nothing(
    example_rules: RuleSet, events: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    """Without messageIds, a redelivered record is known by its offset in the profile
    it was applied to: the one its anchor names (`attributes.stitching.anchored`), not
    its highest-priority identity's; so it is not stitched again."""
    for _, value in events:
        value.pop("messageId")
    records = to_topic_records(data, events)

    async def go() -> None:
        store = MemoryProfileStore()

        def worker() -> BatchProcessor:  # a restarted one knows no offsets of its own
            return BatchProcessor(
                example_rules, store, ListDeadLetters(), clock=clock, sources=SOURCES, trust=TRUST
            )

        first = worker()
        for batch in split(data, records):
            await first.process(batch)
        before = (dict(store.states), dict(store.views), dict(store.index))
        replayed = records[data.draw(st.integers(0, len(records))) :]
        again = worker()
        reports = [await again.process(batch) for batch in split(data, replayed)]
        assert sum(report.duplicates for report in reports) == len(replayed)
        assert (store.states, store.views, store.index) == before
        # not stitched again either: a replay counts no refusal a second time
        assert [refusal for report in reports for refusal in report.refusals] == []

    asyncio.run(go())


def test_a_processor_given_no_trust_links_nothing(example_rules: RuleSet) -> None:
    """The safe default holds without the settings too: a source no one declared
    trusted links nothing (as in the worker, `TRAITFLOW_SOURCE_TRUST`), whoever builds
    the processor; a test or tool whose events must link says so (`trust=`)."""
    login = {
        "type": "identify",
        "messageId": "m-1",
        "anonymousId": "a-attacker",
        "userId": "u-victim",
        "timestamp": "2026-11-04T09:00:00Z",
    }
    record = Record("web", 0, 1, orjson.dumps(login), 0)

    async def go() -> None:
        victim = {"type": "identify", "messageId": "m-0", "userId": "u-victim"}
        store = MemoryProfileStore()
        processor = BatchProcessor(example_rules, store, ListDeadLetters(), clock=clock)
        await processor.process([Record("web", 0, 0, orjson.dumps(victim), 0)])
        report = await processor.process([record])
        assert [(r.identity, r.kind, r.source) for r in report.refusals] == [
            (("user_id", "u-victim"), "merge", "web")
        ]
        assert (
            orjson.loads(await store.read_view("user", "anonymous_id", "a-attacker") or b"{}")["id"]
            != orjson.loads(await store.read_view("user", "user_id", "u-victim") or b"{}")["id"]
        )

    asyncio.run(go())
