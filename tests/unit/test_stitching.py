"""The Stitcher: which profile each event of a batch belongs to, and which profiles merge.

Pure: the identity index as read (`pointers`) and the loaded states go in, a `Plan`
comes out. The processor-level oracle is in `test_processor_stitching.py`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attributes.identities import DEFAULT_USER, EntitySpec, IdentityRules, IdentitySpec
from attributes.profile import ProfileState
from attributes.stitching import Identity, Plan, Refusal, Stitcher

USER = IdentityRules(DEFAULT_USER)
NO_STITCHING = IdentityRules(DEFAULT_USER.model_copy(update={"stitching": False}))

#: an event's identities (priority order) and, for an alias, its previousId as each type
Event = tuple[list[Identity], list[Identity]]


def uid(value: str) -> Identity:
    return ("user_id", value)


def email(value: str) -> Identity:
    return ("email", value)


def anon(value: str) -> Identity:
    return ("anonymous_id", value)


def alias(value: str) -> list[Identity]:
    """An alias event's previousId as the default user's alias types give it."""
    return [uid(value), anon(value)]


def stored(pid: str, *identities: Identity, first_seen: int = 1_000) -> ProfileState:
    """A stored profile holding `identities` (one event applied)."""
    state = ProfileState(id=pid, first_seen=first_seen, last_seen=first_seen, version=1)
    for kind, value in identities:
        state.identities.setdefault(kind, []).append(value)
    return state


def index(*states: ProfileState) -> tuple[dict[Identity, str], dict[str, ProfileState]]:
    """The pointers and profiles a batch reads when `states` are all it touches."""
    pointers = {
        (kind, value): state.id
        for state in states
        for kind, values in state.identities.items()
        for value in values
    }
    return pointers, {state.id: state for state in states}


def linked(plan: Plan) -> dict[str, set[Identity]]:
    """The identities that must point at each final profile (the plan may list one twice)."""
    return {profile: set(links) for profile, links in plan.links.items()}


def stitch(
    events: Sequence[list[Identity] | Event],
    states: Sequence[ProfileState] = (),
    rules: IdentityRules = USER,
    pointers: Mapping[Identity, str] | None = None,
) -> Plan:
    """Plan a batch of events, each its identities or (identities, previous); the
    pointers are those `states` hold unless given."""
    read, profiles = index(*states)
    stitcher = Stitcher(rules, read if pointers is None else pointers, profiles)
    for item in events:
        if isinstance(item, tuple):
            stitcher.assign(*item)
        else:
            stitcher.assign(item)
    return stitcher.finish()


# --- new identities -------------------------------------------------------------------------


def test_a_new_identity_makes_a_profile_named_after_it() -> None:
    plan = stitch([[anon("a-1")], [anon("a-1")], [uid("u-1"), email("ada@x.io"), anon("a-2")]])
    assert plan.profiles == ["anonymous_id:a-1", "anonymous_id:a-1", "u-1"]
    assert plan.created == ["anonymous_id:a-1", "u-1"]
    assert plan.links == {
        "anonymous_id:a-1": [anon("a-1")],
        "u-1": [uid("u-1"), email("ada@x.io"), anon("a-2")],
    }
    assert (plan.merges, plan.refusals) == ([], [])


def test_a_profile_is_named_after_the_events_highest_priority_identity() -> None:
    plan = stitch([[email("ada@x.io"), anon("a-1")], [uid("a:b")]])
    assert plan.profiles == ["email:ada@x.io", "user_id:a:b"]
    assert plan.created == ["email:ada@x.io", "user_id:a:b"]


def test_known_identities_change_nothing() -> None:
    user = stored("u-1", uid("u-1"), anon("a-1"))
    plan = stitch([[uid("u-1"), anon("a-1")], [anon("a-1")]], [user])
    assert plan == Plan(profiles=["u-1", "u-1"])


def test_a_known_profile_takes_a_new_identity() -> None:
    plan = stitch([[uid("u-1"), anon("a-2")]], [stored("u-1", uid("u-1"), anon("a-1"))])
    assert plan == Plan(profiles=["u-1"], links={"u-1": [anon("a-2")]})


# --- logging in, CRM events, chains ---------------------------------------------------------


def test_logging_in_moves_the_anonymous_profile_under_the_user_id() -> None:
    device = stored("anonymous_id:a-1", anon("a-1"), anon("a-2"), first_seen=10)
    plan = stitch([[anon("a-1")], [uid("u-1"), anon("a-1")], [anon("a-2")]], [device])
    assert plan.merges == [("anonymous_id:a-1", "u-1")]
    assert plan.created == ["u-1"]
    assert plan.profiles == ["u-1", "u-1", "u-1"]  # the event before the login too
    assert linked(plan) == {"u-1": {uid("u-1"), anon("a-1"), anon("a-2")}}
    assert plan.refusals == []


def test_logging_in_to_a_known_user_merges_the_device_into_it() -> None:
    user = stored("u-1", uid("u-1"), first_seen=500)
    device = stored("anonymous_id:a-1", anon("a-1"), first_seen=10)  # older, lower rank
    plan = stitch([[uid("u-1"), anon("a-1")]], [user, device])
    assert plan.merges == [("anonymous_id:a-1", "u-1")]
    assert plan.created == []
    assert linked(plan) == {"u-1": {anon("a-1")}}


def test_a_crm_event_with_only_an_email_goes_to_the_profile_holding_it() -> None:
    user = stored("u-1", uid("u-1"), email("ada@x.io"))
    plan = stitch([[email("ada@x.io")]], [user])
    assert plan == Plan(profiles=["u-1"])


def test_a_crm_event_with_a_new_email_makes_a_profile_that_a_later_login_merges() -> None:
    plan = stitch([[email("ada@x.io")], [uid("u-1"), email("ada@x.io")]])
    assert plan.created == ["email:ada@x.io", "u-1"]
    assert plan.merges == [("email:ada@x.io", "u-1")]
    assert plan.profiles == ["u-1", "u-1"]
    assert linked(plan) == {"u-1": {uid("u-1"), email("ada@x.io")}}


def test_three_profiles_merged_by_two_events_in_one_batch() -> None:
    states = [
        stored("anonymous_id:a-1", anon("a-1"), first_seen=1),
        stored("anonymous_id:a-2", anon("a-2"), first_seen=2),
        stored("email:ada@x.io", email("ada@x.io"), first_seen=3),
    ]
    plan = stitch(
        [
            [anon("a-1")],
            [anon("a-2")],
            [email("ada@x.io"), anon("a-1")],  # the email profile outranks a-1's
            [anon("a-1")],
            [uid("u-1"), anon("a-2")],  # a-2's profile goes under u-1
            [uid("u-1"), email("ada@x.io")],  # and so does the email's, with a-1
            [anon("a-2")],
        ],
        states,
    )
    assert plan.merges == [
        ("anonymous_id:a-1", "email:ada@x.io"),
        ("anonymous_id:a-2", "u-1"),
        ("email:ada@x.io", "u-1"),
    ]
    assert plan.profiles == ["u-1"] * 7
    assert plan.created == ["u-1"]
    assert list(plan.links) == ["u-1"]
    assert set(plan.links["u-1"]) == {uid("u-1"), email("ada@x.io"), anon("a-1"), anon("a-2")}


def test_a_survivor_absorbed_later_leaves_everything_under_the_last_one() -> None:
    plan = stitch(
        [[email("e@x.io")], [anon("a-1")], [email("e@x.io"), anon("a-1")], [uid("u"), anon("a-1")]]
    )
    assert plan.merges == [("anonymous_id:a-1", "email:e@x.io"), ("email:e@x.io", "u")]
    assert plan.profiles == ["u"] * 4
    assert plan.created == ["email:e@x.io", "anonymous_id:a-1", "u"]
    assert list(plan.links) == ["u"]
    assert set(plan.links["u"]) == {uid("u"), email("e@x.io"), anon("a-1")}


# --- limits ---------------------------------------------------------------------------------


def test_two_users_are_never_merged() -> None:
    first = stored("u-1", uid("u-1"), anon("shared"))
    second = stored("u-2", uid("u-2"))
    plan = stitch([[uid("u-2"), anon("shared")], [anon("shared")], [uid("u-2")]], [first, second])
    assert plan.merges == []
    assert plan.refusals == [
        Refusal("u-2", anon("shared"), "merging u-1 would exceed the user_id limit")
    ]
    assert plan.profiles == ["u-2", "u-1", "u-2"]  # the shared device stays with u-1
    assert plan.links == {}


def test_a_new_user_on_a_known_users_device_gets_a_profile_without_the_device() -> None:
    first = stored("u-1", uid("u-1"), anon("shared"))
    plan = stitch([[uid("u-2"), anon("shared"), email("new@x.io")]], [first])
    assert plan.profiles == ["u-2"]
    assert plan.created == ["u-2"]
    assert plan.links == {"u-2": [uid("u-2"), email("new@x.io")]}
    assert [refusal.identity for refusal in plan.refusals] == [anon("shared")]


def test_a_refused_merge_keeps_the_events_other_identities() -> None:
    first = stored("u-1", uid("u-1"), anon("shared"))
    second = stored("u-2", uid("u-2"))
    device = stored("anonymous_id:a-9", anon("a-9"))
    # the event's email comes before the refused anonymous id; a previousId after it
    plan = stitch(
        [([uid("u-2"), email("e@x.io"), anon("shared")], alias("a-9"))], [first, second, device]
    )
    assert plan.merges == [("anonymous_id:a-9", "u-2")]
    assert linked(plan) == {"u-2": {email("e@x.io"), anon("a-9")}}
    assert len(plan.refusals) == 1


def test_an_email_past_the_limit_is_not_linked() -> None:
    emails = [email(f"e{n}@x.io") for n in range(5)]
    user = stored("u-1", uid("u-1"), *emails)
    plan = stitch([[uid("u-1"), email("e5@x.io")], [email("e5@x.io")]], [user])
    assert plan.refusals == [Refusal("u-1", email("e5@x.io"), "email limit 5 reached: not linked")]
    # unlinked, the email makes a profile of its own when it comes alone
    assert plan.profiles == ["u-1", "email:e5@x.io"]
    assert plan.created == ["email:e5@x.io"]
    assert plan.links == {"email:e5@x.io": [email("e5@x.io")]}


def test_a_merge_past_the_email_limit_is_refused() -> None:
    user = stored("u-1", uid("u-1"), *[email(f"e{n}@x.io") for n in range(3)])
    other = stored("email:f0@x.io", *[email(f"f{n}@x.io") for n in range(3)], anon("a-1"))
    plan = stitch([[uid("u-1"), anon("a-1")]], [user, other])
    assert plan.merges == []
    assert plan.refusals == [
        Refusal("u-1", anon("a-1"), "merging email:f0@x.io would exceed the email limit")
    ]
    assert plan.profiles == ["u-1"]


def test_the_limit_counts_distinct_values() -> None:
    user = stored("u-1", uid("u-1"), *[email(f"e{n}@x.io") for n in range(4)])
    other = stored("anonymous_id:a-1", email("e3@x.io"), email("e4@x.io"), anon("a-1"))
    plan = stitch([[uid("u-1"), anon("a-1")]], [user, other])
    assert plan.merges == [("anonymous_id:a-1", "u-1")]  # 5 distinct emails: allowed
    assert plan.refusals == []


def test_a_limit_is_per_type_of_the_entity() -> None:
    spec = EntitySpec(
        identities=[
            IdentitySpec(type="account", paths=["traits.account"], limit=2),
            IdentitySpec(type="device", paths=["context.device.id"]),
        ]
    )
    rules = IdentityRules(spec)
    plan = stitch(
        [
            [("account", "x"), ("device", "d-1")],
            [("account", "y"), ("device", "d-1")],
            [("account", "z"), ("device", "d-1")],
        ],
        rules=rules,
    )
    assert plan.merges == [("y", "x")]  # two accounts: within the limit
    assert [refusal.identity for refusal in plan.refusals] == [("device", "d-1")]
    assert plan.profiles == ["x", "x", "z"]


# --- stitching off --------------------------------------------------------------------------


def test_without_stitching_nothing_merges_and_new_identities_are_still_linked() -> None:
    device = stored("anonymous_id:a-1", anon("a-1"))
    plan = stitch(
        [[uid("u-1"), anon("a-1"), email("e@x.io")], ([uid("u-1")], alias("a-1")), [anon("a-1")]],
        [device],
        rules=NO_STITCHING,
    )
    assert plan.merges == []
    assert plan.refusals == []
    assert plan.profiles == ["u-1", "u-1", "anonymous_id:a-1"]
    assert plan.created == ["u-1"]
    assert plan.links == {"u-1": [uid("u-1"), email("e@x.io")]}


# --- alias events ---------------------------------------------------------------------------


def test_an_alias_merges_the_profile_its_previous_id_names() -> None:
    device = stored("anonymous_id:a-1", anon("a-1"))
    plan = stitch([([uid("u-1")], alias("a-1"))], [device])
    assert plan.merges == [("anonymous_id:a-1", "u-1")]
    assert linked(plan) == {"u-1": {uid("u-1"), anon("a-1")}}


def test_an_alias_takes_the_first_type_that_names_a_profile() -> None:
    user = stored("x", uid("x"))
    device = stored("anonymous_id:x", anon("x"))
    plan = stitch([([anon("a-2")], alias("x"))], [user, device])
    assert plan.merges == [("anonymous_id:a-2", "x")]  # not anonymous_id:x
    assert plan.created == ["anonymous_id:a-2"]
    assert plan.profiles == ["x"]
    assert linked(plan) == {"x": {anon("a-2")}}


def test_an_alias_takes_a_later_type_when_only_it_names_a_profile() -> None:
    device = stored("anonymous_id:x", anon("x"))
    plan = stitch([([uid("u-1")], alias("x"))], [device])
    assert plan.merges == [("anonymous_id:x", "u-1")]


def test_an_alias_to_a_previous_id_nobody_has_links_it_as_the_last_type() -> None:
    plan = stitch([([uid("u-1")], alias("x")), [anon("x")]])
    assert plan.links == {"u-1": [uid("u-1"), anon("x")]}
    assert plan.profiles == ["u-1", "u-1"]
    assert plan.merges == []


def test_an_alias_sees_profiles_made_earlier_in_the_batch() -> None:
    plan = stitch([[uid("x")], ([anon("a-1")], alias("x"))])
    assert plan.merges == [("anonymous_id:a-1", "x")]
    assert plan.profiles == ["x", "x"]


def test_an_alias_between_two_users_is_refused() -> None:
    plan = stitch([([uid("u-2")], alias("u-1"))], [stored("u-1", uid("u-1"))])
    assert plan.merges == []
    assert [refusal.identity for refusal in plan.refusals] == [uid("u-1")]
    assert plan.profiles == ["u-2"]


def test_an_event_without_a_previous_id_is_no_alias() -> None:
    assert stitch([([uid("u-1")], [])]) == stitch([[uid("u-1")]])


# --- which id survives ----------------------------------------------------------------------


def test_the_higher_priority_id_survives_whatever_was_seen_first() -> None:
    device = stored("anonymous_id:a-1", anon("a-1"), first_seen=1)
    crm = stored("email:e@x.io", email("e@x.io"), first_seen=9_999)
    plan = stitch([[anon("a-1")], [email("e@x.io"), anon("a-1")]], [device, crm])
    assert plan.merges == [("anonymous_id:a-1", "email:e@x.io")]


@pytest.mark.parametrize("target", ["a", "b"])
@pytest.mark.parametrize(("seen_a", "seen_b", "survivor"), [(2, 1, "b"), (1, 2, "a"), (5, 5, "a")])
def test_between_equal_ranks_the_first_seen_then_the_smaller_id_survives(
    target: str, seen_a: int, seen_b: int, survivor: str
) -> None:
    """Whichever of the two profiles the event belongs with."""
    a = stored("email:a", email("a"), anon("of-a"), first_seen=seen_a)
    b = stored("email:b", email("b"), anon("of-b"), first_seen=seen_b)
    other = "b" if target == "a" else "a"
    plan = stitch([[email(target), anon(f"of-{other}")]], [a, b])
    absorbed = "b" if survivor == "a" else "a"
    assert plan.merges == [(f"email:{absorbed}", f"email:{survivor}")]
    assert plan.profiles == [f"email:{survivor}"]


def test_a_profile_made_in_the_batch_counts_as_seen_last() -> None:
    late = stored("email:z", email("z"), anon("x"), first_seen=2**40)
    plan = stitch([[email("a"), anon("x")]], [late])
    assert plan.created == ["email:a"]
    assert plan.merges == [("email:a", "email:z")]  # not the smaller id
    assert plan.profiles == ["email:z"]


def test_two_profiles_made_in_the_batch_are_ordered_by_id() -> None:
    plan = stitch([[email("b"), anon("x")], [email("a")], [email("a"), anon("x")]])
    assert plan.merges == [("email:b", "email:a")]
    assert plan.profiles == ["email:a"] * 3


def test_a_stored_profile_with_no_events_counts_as_seen_last() -> None:
    empty = ProfileState(id="email:a", identities={"email": ["a"]}, first_seen=0)
    old = stored("email:b", email("b"), anon("x"), first_seen=5)
    plan = stitch([[email("a"), anon("x")]], [empty, old])
    assert plan.merges == [("email:a", "email:b")]


# --- a stored profile that already has a new identity's id ----------------------------------


def test_a_stored_profile_with_a_new_identitys_id_is_taken_over() -> None:
    """Its identity lost from the index: the batch must not overwrite the profile."""
    orphan = ProfileState(id="anonymous_id:a-1", first_seen=7, last_seen=7, version=3)
    plan = stitch([[anon("a-1")], [anon("a-1")]], [orphan], pointers={})
    assert plan.created == []
    assert plan.profiles == ["anonymous_id:a-1"] * 2
    assert plan.links == {"anonymous_id:a-1": [anon("a-1")]}
    assert plan.refusals == []


def test_a_taken_over_profile_that_holds_the_identity_gets_its_pointer_back() -> None:
    orphan = stored("u-1", uid("u-1"), email("e@x.io"))
    plan = stitch([[uid("u-1")]], [orphan], pointers={})
    assert plan.created == []
    assert plan.profiles == ["u-1"]
    assert plan.refusals == []
    assert plan.links == {"u-1": [uid("u-1")]}


def test_a_taken_over_profile_counts_each_held_value_once() -> None:
    spec = EntitySpec(
        identities=[
            IdentitySpec(type="user_id", paths=["userId"], limit=1),
            IdentitySpec(type="email", paths=["traits.email"], limit=2),
        ],
        alias_types=["email"],
    )
    orphan = stored("email:e", email("e"))
    # an alias whose previousId is an email nobody has: linked, the profile's second
    plan = stitch([([email("e")], [email("f")])], [orphan], IdentityRules(spec), pointers={})
    assert plan.refusals == []
    assert plan.links == {"email:e": [email("e"), email("f")]}


# --- properties -----------------------------------------------------------------------------

identities = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["u-1", "u-2"])),
        st.one_of(st.none(), st.sampled_from(["e1", "e2", "e3"])),
        st.one_of(st.none(), st.sampled_from(["a1", "a2", "a3", "a4"])),
        st.one_of(st.none(), st.sampled_from(["u-1", "a1", "a5"])),  # an alias's previousId
    ),
    max_size=12,
)


def events_of(drawn: list[tuple[str | None, ...]]) -> list[Event]:
    events: list[Event] = []
    for user, mail, device, previous in drawn:
        ids = [
            identity
            for identity in (
                uid(user) if user else None,
                email(mail) if mail else None,
                anon(device) if device else None,
            )
            if identity is not None
        ]
        if ids:
            events.append((ids, alias(previous) if previous else []))
    return events


def run(events: Sequence[Event], rules: IdentityRules = USER) -> Plan:
    stitcher = Stitcher(rules, {}, {})
    for ids, previous in events:
        stitcher.assign(ids, previous)
    return stitcher.finish()


@settings(max_examples=200)
@given(identities)
def test_stitching_is_deterministic(drawn: list[tuple[str | None, ...]]) -> None:
    events = events_of(drawn)
    assert run(events) == run(events)


def test_the_order_the_index_and_states_are_read_in_does_not_matter() -> None:
    states = [
        stored("anonymous_id:a-1", anon("a-1"), first_seen=3),
        stored("email:e", email("e"), anon("a-2"), first_seen=3),
        stored("email:d", email("d"), first_seen=3),
    ]
    events: list[Event] = [
        ([email("e"), anon("a-1")], []),
        ([email("d"), anon("a-2")], []),
        ([uid("u")], alias("a-1")),
    ]
    forward = stitch(events, states)
    pointers, profiles = index(*states)
    stitcher = Stitcher(USER, dict(reversed(pointers.items())), dict(reversed(profiles.items())))
    for ids, previous in events:
        stitcher.assign(ids, previous)
    assert stitcher.finish() == forward
    assert forward.merges == [
        ("anonymous_id:a-1", "email:e"),
        ("email:e", "email:d"),  # equal rank and first seen: the smaller id
        ("email:d", "u"),
    ]
    assert forward.profiles == ["u"] * 3


@settings(max_examples=200)
@given(identities, st.booleans())
def test_every_plan_keeps_the_graph_consistent(
    drawn: list[tuple[str | None, ...]], stitching: bool
) -> None:
    """Every event ends with its first identity's final profile; every linked identity
    is under one final profile; no profile holds more values of a type than its limit."""
    events = events_of(drawn)
    rules = USER if stitching else NO_STITCHING
    plan = run(events, rules)
    owners: dict[Identity, str] = {}
    for profile, links in plan.links.items():
        for identity in links:
            assert owners.setdefault(identity, profile) == profile
    absorbed = {gone for gone, _ in plan.merges}
    assert not absorbed & set(plan.profiles)
    assert not absorbed & set(plan.links)
    assert set(plan.links) == set(plan.profiles)
    for (ids, _), profile in zip(events, plan.profiles, strict=True):
        assert owners[ids[0]] == profile
    for profile, links in plan.links.items():
        for kind, limit in rules.limits.items():
            values = {value for k, value in links if k == kind}
            assert limit is None or len(values) <= limit, (profile, kind, values)
    if not stitching:
        assert plan.merges == []
