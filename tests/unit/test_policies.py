"""Merge policies (`attributes.policies`) and their settings (`traitflow.config`).

`merge_fields` is pure: fragments are source -> trait -> [event ms, messageId, value].
The property test checks `timestamp_ordered` against its definition: per field, the
entry with the largest (event time, messageId, source) over every source's entries.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.policies import (
    DEFAULT_POLICIES,
    DEFAULT_POLICY,
    Field,
    Fragments,
    MergePolicy,
    field_values,
    merge_fields,
)
from traitflow.config import Settings

T0 = 1_794_394_800_000  # 2026-11-11T11:00:00Z
TIMESTAMP = MergePolicy(kind="timestamp_ordered")


def precedence(*sources: str) -> MergePolicy:
    return MergePolicy(kind="source_precedence", sources=list(sources))


FRAGMENTS: Fragments = {
    "web": {
        "plan": [T0 + 3, "m-w1", "free"],
        "name": [T0 + 1, "m-w2", "Ann"],
    },
    "crm": {
        "plan": [T0 + 2, "m-c1", "pro"],
        "tier": [T0 + 5, "m-c1", "gold"],
    },
    "ads": {
        "plan": [T0 + 9, "m-a1", "ad-plan"],
        "campaign": [T0 + 4, "m-a1", "spring"],
    },
}


# --- timestamp_ordered ----------------------------------------------------------------------


def test_timestamp_ordered_takes_the_latest_event_per_field_whatever_its_source() -> None:
    assert merge_fields(FRAGMENTS, TIMESTAMP) == {
        "plan": Field("ad-plan", "ads", T0 + 9),
        "name": Field("Ann", "web", T0 + 1),
        "tier": Field("gold", "crm", T0 + 5),
        "campaign": Field("spring", "ads", T0 + 4),
    }


def test_the_default_policy_is_timestamp_ordered() -> None:
    assert DEFAULT_POLICY == TIMESTAMP
    assert DEFAULT_POLICIES == {"default": TIMESTAMP}
    assert merge_fields(FRAGMENTS, DEFAULT_POLICY) == merge_fields(FRAGMENTS, TIMESTAMP)


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_a_time_tie_goes_to_the_larger_message_id(order: tuple[str, str]) -> None:
    entries = {"a": {"plan": [T0, "m-2", "from-a"]}, "b": {"plan": [T0, "m-1", "from-b"]}}
    fragments = {source: entries[source] for source in order}
    assert merge_fields(fragments, TIMESTAMP) == {"plan": Field("from-a", "a", T0)}


@pytest.mark.parametrize("order", [("crm", "web"), ("web", "crm")])
def test_a_time_and_message_id_tie_goes_to_the_later_source_name(order: tuple[str, str]) -> None:
    entries = {"crm": {"plan": [T0, "m-1", "crm"]}, "web": {"plan": [T0, "m-1", "web"]}}
    fragments = {source: entries[source] for source in order}
    assert merge_fields(fragments, TIMESTAMP) == {"plan": Field("web", "web", T0)}


def test_event_time_outranks_the_message_id() -> None:
    fragments = {"a": {"x": [T0 + 1, "m-0", "newer"]}, "b": {"x": [T0, "m-9", "older"]}}
    assert field_values(fragments, TIMESTAMP) == {"x": "newer"}


def test_no_fragments_merge_to_no_fields() -> None:
    assert merge_fields({}, TIMESTAMP) == {}
    assert merge_fields({"web": {}}, precedence("web")) == {}


def test_values_are_kept_as_they_are() -> None:
    value = {"nested": [1, 2.5, None, True]}
    assert field_values({"web": {"x": [T0, "m", value]}}, TIMESTAMP) == {"x": value}


# --- source_precedence ----------------------------------------------------------------------


def test_source_precedence_takes_each_field_from_the_first_listed_source() -> None:
    assert merge_fields(FRAGMENTS, precedence("crm", "web")) == {
        "plan": Field("pro", "crm", T0 + 2),  # crm's, though web's and ads' are newer
        "name": Field("Ann", "web", T0 + 1),  # crm has none: the next listed source's
        "tier": Field("gold", "crm", T0 + 5),
    }


def test_source_precedence_ignores_unlisted_sources() -> None:
    merged = field_values(FRAGMENTS, precedence("web"))
    assert merged == {"plan": "free", "name": "Ann"}
    assert "campaign" not in field_values(FRAGMENTS, precedence("crm", "web"))


def test_the_order_of_listed_sources_decides() -> None:
    assert field_values(FRAGMENTS, precedence("web", "crm"))["plan"] == "free"
    assert field_values(FRAGMENTS, precedence("ads", "web", "crm"))["plan"] == "ad-plan"


def test_a_listed_source_without_fragments_is_skipped() -> None:
    assert field_values(FRAGMENTS, precedence("nobody", "crm")) == {"plan": "pro", "tier": "gold"}


# --- property: timestamp_ordered is the latest entry over the union ---------------------------

entries = st.tuples(
    st.integers(T0, T0 + 3),  # few times: ties are common
    st.sampled_from(["", "m-1", "m-2"]),
    st.integers(0, 99),
).map(list)
fragments = st.dictionaries(
    st.sampled_from(["ads", "crm", "web", "app"]),
    st.dictionaries(st.sampled_from(["plan", "name", "tier"]), entries, max_size=3),
    max_size=4,
)


def latest_over_the_union(fragments: Fragments) -> dict[str, Field]:
    union: dict[str, list[tuple[int, str, str, Any]]] = {}
    for source, traits in fragments.items():
        for trait, (at, mid, value) in traits.items():
            union.setdefault(trait, []).append((at, mid, source, value))
    expected = {}
    for trait, candidates in union.items():
        at, _, source, value = max(candidates, key=lambda c: (c[0], c[1], c[2]))
        expected[trait] = Field(value, source, at)
    return expected


def first_listed(fragments: Fragments, sources: list[str]) -> dict[str, Any]:
    traits = {trait for source in sources for trait in fragments.get(source, {})}
    return {
        trait: next(fragments[s][trait][2] for s in sources if trait in fragments.get(s, {}))
        for trait in traits
    }


@settings(max_examples=300, deadline=None)
@given(fragments)
def test_timestamp_ordered_is_the_latest_entry_per_field_over_every_source(
    fragments: Fragments,
) -> None:
    assert merge_fields(fragments, TIMESTAMP) == latest_over_the_union(fragments)


@settings(max_examples=300, deadline=None)
@given(fragments, st.permutations(["ads", "crm", "web", "app"]), st.integers(1, 4))
def test_source_precedence_is_the_first_listed_source_per_field(
    fragments: Fragments, order: list[str], listed: int
) -> None:
    sources = order[:listed]
    assert field_values(fragments, precedence(*sources)) == first_listed(fragments, sources)


# --- MergePolicy validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "source_precedence"}, "a source_precedence policy lists at least one source"),
        (
            {"kind": "source_precedence", "sources": []},
            "a source_precedence policy lists at least one source",
        ),
        (
            {"kind": "timestamp_ordered", "sources": ["web"]},
            "a timestamp_ordered policy merges every source: no `sources`",
        ),
        ({"sources": ["web"]}, "a timestamp_ordered policy merges every source: no `sources`"),
        (
            {"kind": "source_precedence", "sources": ["crm", "web", "crm"]},
            "a source is listed twice",
        ),
    ],
)
def test_inconsistent_policies_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
        MergePolicy.model_validate(fields)


@pytest.mark.parametrize(
    "fields", [{"kind": "latest"}, {"kind": "source_precedence", "sources": ["a"], "x": 1}]
)
def test_unknown_kinds_and_members_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        MergePolicy.model_validate(fields)


def test_a_policy_is_frozen() -> None:
    policy = precedence("crm")
    with pytest.raises(pydantic.ValidationError):
        policy.kind = "timestamp_ordered"


# --- Settings: policies and deletes name bound sources --------------------------------------

SOURCES = {"web-events": "web", "crm-events": "crm"}
CRM_FIRST = {"kind": "source_precedence", "sources": ["crm", "web"]}


def test_consistent_policy_settings_are_accepted() -> None:
    chosen = Settings(
        sources=SOURCES,
        merge_policies={"default": {}, "crm-first": CRM_FIRST},  # type: ignore[dict-item]
        default_merge_policy="crm-first",
        source_deletes={"crm": "record", "web": "fields"},
    )
    assert chosen.default_policy == precedence("crm", "web")
    assert chosen.merge_policies["default"] == TIMESTAMP
    assert Settings().default_policy == TIMESTAMP


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"default_merge_policy": "nope"},
            "default_merge_policy 'nope' is not one of the merge_policies (default)",
        ),
        (
            {"merge_policies": {}},
            "default_merge_policy 'default' is not one of the merge_policies (none)",
        ),
        (
            {"sources": SOURCES, "source_deletes": {"ads": "record"}},
            "source_deletes: no ingest topic is bound to source 'ads' (sources: crm, web)",
        ),
        (
            {
                "sources": SOURCES,
                "merge_policies": {
                    "default": {},
                    "ads-first": {"kind": "source_precedence", "sources": ["web", "ads"]},
                },
            },
            "merge_policies: 'ads-first' lists source 'ads', which no ingest topic is bound "
            "to (sources: crm, web)",
        ),
        (
            {"source_deletes": {"crm": "record"}},
            "source_deletes: no ingest topic is bound to source 'crm' (sources: default)",
        ),
    ],
)
def test_policy_settings_must_name_what_exists(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(problem)):
        Settings(**changes)


def test_a_delete_mode_is_fields_or_record() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(sources=SOURCES, source_deletes={"crm": "everything"})  # type: ignore[dict-item]


def test_policy_settings_survive_the_environment_a_child_process_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = Settings(
        sources=SOURCES,
        merge_policies={"default": TIMESTAMP, "crm-first": precedence("crm", "web")},
        source_deletes={"crm": "record"},
    )
    for name, value in chosen.as_env().items():
        monkeypatch.setenv(name, value)
    child = Settings.from_environ(os.environ)
    assert child.sources == SOURCES
    assert child.merge_policies == chosen.merge_policies
    assert child.source_deletes == {"crm": "record"}
    assert child.default_policy == TIMESTAMP


def test_isolated_settings_with_several_sources_still_validate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = Settings(
        sources=SOURCES,
        merge_policies={"default": TIMESTAMP, "crm-first": precedence("crm", "web")},
        source_deletes={"crm": "record"},
    )
    isolated = chosen.isolated("tf-iso")
    for name, value in isolated.as_env().items():
        monkeypatch.setenv(name, value)
    child = Settings.from_environ(os.environ)  # what `traitflow worker` / `api` build
    assert sorted(child.sources.values()) == ["crm", "web"]
    assert all(topic.startswith("tf-iso") for topic in child.sources)
