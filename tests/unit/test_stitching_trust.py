"""Trusted links: what an event may link by its source's trust level (`attributes.
stitching`, module docstring), pure. The attack each test names is the one the rule
prevents, or, for `authenticated`, the one it accepts (a forged userId).

The processor-level oracle with trust levels is in `test_processor_trust.py`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.profile import ProfileState
from attributes.stitching import (
    LIMIT,
    LINK,
    MERGE,
    Identity,
    Plan,
    Refusal,
    Stitcher,
    Trust,
    anchored,
)
from streams.metrics import WorkerMetrics
from streams.records import BatchReport
from streams.refusals import RefusalLog
from tests.unit.test_stitching import (
    NO_STITCHING,
    USER,
    alias,
    anon,
    email,
    index,
    linked,
    stored,
    uid,
)
from traitflow.config import Settings
from traitflow.demo import demo_trust

TRUSTED, AUTHENTICATED, UNTRUSTED = Trust.TRUSTED, Trust.AUTHENTICATED, Trust.UNTRUSTED
ANONYMOUS = frozenset({"anonymous_id"})

#: an event: its identities (priority order), its alias previousId as each type
Event = tuple[list[Identity], list[Identity]]


def stitch(
    events: Sequence[list[Identity] | Event],
    states: Sequence[ProfileState] = (),
    trust: Trust = UNTRUSTED,
    rules: IdentityRules = USER,
) -> Plan:
    pointers, profiles = index(*states)
    stitcher = Stitcher(rules, pointers, profiles)
    for item in events:
        ids, previous = item if isinstance(item, tuple) else (item, [])
        stitcher.assign(ids, previous, trust=trust, source="web")
    return stitcher.finish()


def refused(plan: Plan) -> list[tuple[Identity, str]]:
    return [(refusal.identity, refusal.kind) for refusal in plan.refusals]


def victim() -> ProfileState:
    return stored("u-victim", uid("u-victim"), email("victim@x.io"), anon("a-victim"))


# --- the attack: the attacker's anonymous id with the victim's email ---------------


def test_trusted_the_attackers_device_joins_the_victims_profile() -> None:
    """What every source did before trust levels: right for a CRM, not for a browser."""
    plan = stitch([[email("victim@x.io"), anon("a-attacker")]], [victim()], TRUSTED)
    assert plan.profiles == ["u-victim"]
    assert plan.links == {"u-victim": [anon("a-attacker")]}


@pytest.mark.parametrize("trust", [UNTRUSTED, AUTHENTICATED])
def test_the_victims_email_with_the_attackers_device_links_nothing(trust: Trust) -> None:
    plan = stitch([[email("victim@x.io"), anon("a-attacker")]], [victim()], trust)
    # applied to the attacker's own device profile: a read by a-attacker serves that
    assert plan.profiles == ["anonymous_id:a-attacker"]
    assert plan.created == ["anonymous_id:a-attacker"]
    assert plan.links == {"anonymous_id:a-attacker": [anon("a-attacker")]}
    assert plan.merges == []
    assert plan.refusals == [
        Refusal(
            "anonymous_id:a-attacker",
            email("victim@x.io"),
            f"{trust} source 'web' may not merge u-victim into anonymous_id:a-attacker",
            MERGE,
            "web",
        )
    ]


def test_the_attackers_known_device_is_not_merged_into_the_victim() -> None:
    device = stored("anonymous_id:a-attacker", anon("a-attacker"))
    plan = stitch([[email("victim@x.io"), anon("a-attacker")]], [victim(), device])
    assert plan.merges == []
    assert plan.profiles == ["anonymous_id:a-attacker"]
    assert plan.links == {}
    assert refused(plan) == [(email("victim@x.io"), MERGE)]


def test_a_new_email_with_a_device_is_not_linked_either() -> None:
    """Else the attacker's profile would hold the victim's email before the victim's
    CRM record arrives (trusted, by email), which would then land on the attacker."""
    plan = stitch([[email("future@x.io"), anon("a-attacker")]])
    assert plan.links == {"anonymous_id:a-attacker": [anon("a-attacker")]}
    assert refused(plan) == [(email("future@x.io"), LINK)]


# --- the victim's userId with the attacker's anonymous id --------------------------------


def test_untrusted_the_victims_user_id_with_the_attackers_device_links_nothing() -> None:
    plan = stitch([[uid("u-victim"), anon("a-attacker")]], [victim()])
    assert plan.profiles == ["anonymous_id:a-attacker"]
    assert plan.merges == []
    assert refused(plan) == [(uid("u-victim"), MERGE)]


def test_authenticated_vouches_for_the_user_id_so_a_forged_one_would_link() -> None:
    """Why `authenticated` is not the default: it takes the userId as the sender's own."""
    plan = stitch([[uid("u-victim"), anon("a-attacker")]], [victim()], AUTHENTICATED)
    assert plan.profiles == ["u-victim"]
    assert plan.links == {"u-victim": [anon("a-attacker")]}
    assert plan.refusals == []


# --- the attacker's userId with the victim's anonymous id --------------------------------


def test_untrusted_the_attackers_user_id_with_the_victims_device_links_nothing() -> None:
    attacker = stored("u-attacker", uid("u-attacker"))
    plan = stitch([[uid("u-attacker"), anon("a-victim")]], [victim(), attacker])
    # applied to the profile its device names (which gains no identity)
    assert plan.profiles == ["u-victim"]
    assert (plan.merges, plan.links, plan.created) == ([], {}, [])
    assert refused(plan) == [(uid("u-attacker"), MERGE)]


def test_authenticated_does_not_move_a_device_a_known_profile_holds() -> None:
    attacker = stored("u-attacker", uid("u-attacker"))
    plan = stitch([[uid("u-attacker"), anon("a-victim")]], [victim(), attacker], AUTHENTICATED)
    assert plan.profiles == ["u-attacker"]
    assert (plan.merges, plan.links) == ([], {})
    assert refused(plan) == [(anon("a-victim"), MERGE)]


def test_authenticated_a_device_no_known_profile_holds_is_merged_in() -> None:
    """The login: the device's anonymous history goes under the user (whoever sends
    another's anonymous id has what a read by it serves already)."""
    device = stored("anonymous_id:a-1", anon("a-1"), anon("a-2"))
    user = stored("u-1", uid("u-1"))
    plan = stitch([[uid("u-1"), anon("a-1")], [anon("a-2")]], [device, user], AUTHENTICATED)
    assert plan.merges == [("anonymous_id:a-1", "u-1")]
    assert plan.profiles == ["u-1", "u-1"]
    assert linked(plan) == {"u-1": {anon("a-1"), anon("a-2")}}
    assert plan.refusals == []


def test_authenticated_a_new_user_takes_its_new_device() -> None:
    plan = stitch([[uid("u-1"), email("e@x.io"), anon("a-1")]], trust=AUTHENTICATED)
    assert plan.profiles == ["u-1"]
    assert plan.links == {"u-1": [uid("u-1"), anon("a-1")]}
    assert refused(plan) == [(email("e@x.io"), LINK)]  # an email is no anonymous id


def test_authenticated_never_merges_two_known_profiles() -> None:
    crm = stored("email:e@x.io", email("e@x.io"))
    plan = stitch([[uid("u-1"), email("e@x.io")]], [crm, stored("u-1", uid("u-1"))], AUTHENTICATED)
    assert plan.merges == []
    assert refused(plan) == [(email("e@x.io"), MERGE)]


def test_authenticated_without_a_user_id_is_untrusted() -> None:
    plan = stitch([[email("e@x.io"), anon("a-1")]], trust=AUTHENTICATED)
    assert plan.profiles == ["anonymous_id:a-1"]
    assert refused(plan) == [(email("e@x.io"), LINK)]


# --- email-only identify, known links, aliases, stitching off ------------------------------


@pytest.mark.parametrize("trust", [UNTRUSTED, AUTHENTICATED])
def test_an_email_only_identify_goes_to_the_emails_profile(trust: Trust) -> None:
    """As any event names a profile: an untrusted source adds to a profile, never
    connects two."""
    plan = stitch([[email("victim@x.io")], [email("new@x.io")]], [victim()], trust)
    assert plan.profiles == ["u-victim", "email:new@x.io"]
    assert plan.created == ["email:new@x.io"]
    assert plan.refusals == []


def test_identities_a_trusted_source_linked_already_are_no_refusal() -> None:
    plan = stitch([[uid("u-victim"), email("victim@x.io"), anon("a-victim")]], [victim()])
    assert plan == Plan(profiles=["u-victim"])


def test_untrusted_two_new_identities_make_the_device_profile_alone() -> None:
    plan = stitch([[uid("u-new"), anon("a-new")], [uid("u-new")]])
    assert plan.profiles == ["anonymous_id:a-new", "u-new"]
    assert plan.created == ["anonymous_id:a-new", "u-new"]
    assert refused(plan) == [(uid("u-new"), LINK)]


def test_aliases_follow_the_same_rule() -> None:
    device = stored("anonymous_id:a-1", anon("a-1"))
    other = stored("u-2", uid("u-2"))
    states = [device, other, stored("u-1", uid("u-1"))]
    events: list[Event] = [([uid("u-1")], alias("a-1")), ([uid("u-1")], alias("u-2"))]
    untrusted = stitch(events, states)
    assert untrusted.merges == []
    assert refused(untrusted) == [(anon("a-1"), MERGE), (uid("u-2"), MERGE)]
    authenticated = stitch(events, states, AUTHENTICATED)
    assert authenticated.merges == [("anonymous_id:a-1", "u-1")]
    # a previousId that names a user: refused by trust before any limit
    assert refused(authenticated) == [(uid("u-2"), MERGE)]


def test_without_stitching_an_owned_identity_is_no_refusal() -> None:
    """A trusted source would not merge it either: nothing was refused because of trust."""
    states = [stored("anonymous_id:a-1", anon("a-1")), stored("u-1", uid("u-1"))]
    plan = stitch(
        [[uid("u-1"), anon("a-1")], [uid("u-2"), anon("a-1")]], states, rules=NO_STITCHING
    )
    assert plan.profiles == ["anonymous_id:a-1", "anonymous_id:a-1"]
    assert refused(plan) == [(uid("u-2"), LINK)]  # new: a trusted source would link it


def test_identity_limits_still_apply_to_what_authenticated_may_link() -> None:
    device = stored("anonymous_id:a-9", *[anon(f"a-{n}") for n in range(10)])
    rules = IdentityRules(
        DEFAULT_USER.model_copy(
            update={
                "identities": [
                    spec.model_copy(update={"limit": 10}) if spec.type == "anonymous_id" else spec
                    for spec in DEFAULT_USER.identities
                ]
            }
        )
    )
    user = stored("u-1", uid("u-1"), anon("mine"))
    plan = stitch([[uid("u-1"), anon("a-0")]], [device, user], AUTHENTICATED, rules)
    assert plan.merges == []
    assert [(r.identity, r.kind, r.source) for r in plan.refusals] == [(anon("a-0"), LIMIT, "")]


# --- which identity an event is applied to ------------------------------------------------


def test_anchored_puts_first_the_identity_the_event_is_applied_to() -> None:
    ids = [uid("u"), email("e"), anon("a")]
    assert anchored(USER, ids, TRUSTED, anonymous=ANONYMOUS) == ids
    assert anchored(USER, ids, AUTHENTICATED, anonymous=ANONYMOUS) == ids
    assert anchored(USER, ids, UNTRUSTED, anonymous=ANONYMOUS) == [anon("a"), uid("u"), email("e")]
    assert anchored(USER, ids[1:], AUTHENTICATED, anonymous=ANONYMOUS) == [anon("a"), email("e")]
    assert anchored(USER, ids[:2], UNTRUSTED, anonymous=ANONYMOUS) == ids[:2]
    again = anchored(USER, ids, UNTRUSTED, anonymous=ANONYMOUS)
    assert anchored(USER, again, UNTRUSTED, anonymous=ANONYMOUS) == again  # stable


# --- properties: what a limited source can never do ---------------------------------------

drawn_events = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["u-1", "u-2", "u-3"])),
        st.one_of(st.none(), st.sampled_from(["e1", "e2"])),
        st.one_of(st.none(), st.sampled_from(["a1", "a2", "a3", "a4"])),
        st.one_of(st.none(), st.sampled_from(["u-1", "a1", "a5"])),
    ),
    max_size=10,
)


def graph() -> list[ProfileState]:
    """Two known people and an anonymous device."""
    return [
        stored("u-1", uid("u-1"), email("e1"), anon("a1")),
        stored("email:e2", email("e2"), anon("a2")),
        stored("anonymous_id:a3", anon("a3")),
    ]


def as_events(drawn: list[tuple[str | None, ...]]) -> list[Event]:
    events: list[Event] = []
    for user, mail, device, previous in drawn:
        ids = [
            i
            for i in (
                uid(user) if user else None,
                email(mail) if mail else None,
                anon(device) if device else None,
            )
            if i is not None
        ]
        if ids:
            events.append((ids, alias(previous) if previous else []))
    return events


@settings(max_examples=300)
@given(drawn_events)
def test_an_untrusted_source_never_connects_two_identities(
    drawn: list[tuple[str | None, ...]],
) -> None:
    """No merge; a profile it makes holds the one identity it was made for; no known
    profile gains an identity; every event goes to its anchor's profile."""
    events = as_events(drawn)
    states = graph()
    plan = stitch(events, states)
    assert plan.merges == []
    owners, _ = index(*states)
    for profile, links in plan.links.items():
        if profile in plan.created:
            assert len(set(links)) == 1
        else:
            assert all(owners.get(identity) == profile for identity in links)
    made = {pid: links[0] for pid, links in plan.links.items() if pid in plan.created}
    for (ids, _), profile in zip(events, plan.profiles, strict=True):
        first = anchored(USER, ids, UNTRUSTED, anonymous=ANONYMOUS)[0]
        assert owners.get(first, profile) == profile
        assert profile in owners.values() or made[profile] == first


@settings(max_examples=300)
@given(drawn_events)
def test_an_authenticated_source_links_only_anonymous_ids_to_its_user(
    drawn: list[tuple[str | None, ...]],
) -> None:
    """Every merge absorbs an anonymous-only profile into a user's; every identity a
    profile gains is an anonymous id, or the one the profile was made for."""
    events = as_events(drawn)
    states = graph()
    plan = stitch(events, states, AUTHENTICATED)
    known = {state.id for state in states if state.identities.keys() - ANONYMOUS}
    for absorbed, survivor in plan.merges:
        assert absorbed not in known
        assert USER.id_rank(survivor) == 0  # a user's
    owners, _ = index(*states)
    for profile, links in plan.links.items():
        for kind, value in links:
            if owners.get((kind, value)) is None and kind != "anonymous_id":
                assert USER.profile_id(kind, value) == profile  # what made it


# --- the refusals' metric and log -----------------------------------------------------------


def test_refusals_by_trust_are_counted_by_source_and_reason_apart_from_limits() -> None:
    metrics = WorkerMetrics()
    report = BatchReport()
    report.refusals = [
        Refusal("p", email("e"), "r", MERGE, "web"),
        Refusal("p", email("f"), "r", MERGE, "web"),
        Refusal("p", uid("u"), "r", LINK, "app"),
        Refusal("p", anon("a"), "limit"),
    ]
    metrics.observe(report, 0.01)
    sample = metrics.registry.get_sample_value
    name = "traitflow_identity_links_refused_total"
    assert sample(name, {"source": "web", "reason": "merge"}) == 2
    assert sample(name, {"source": "app", "reason": "link"}) == 1
    assert sample(name, {"source": "", "reason": "limit"}) is None
    assert sample("traitflow_refused_links_total", {"identity_type": "anonymous_id"}) == 1
    assert sample("traitflow_refused_links_total", {"identity_type": "email"}) is None


def test_refusals_by_trust_are_logged_once_per_source_and_reason_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    refusals = RefusalLog(every_s=10.0, clock=lambda: now[0])
    web = Refusal("p", email("e"), "untrusted source 'web' may not ...", MERGE, "web")
    with caplog.at_level(logging.WARNING, logger="streams.processor"):
        refusals.note([web] * 1000 + [Refusal("p", uid("u"), "r", LINK, "web")])
        refusals.note([Refusal("p", anon("a"), "limit")])  # logged by the processor
        now[0] += 9.0
        refusals.note([web] * 5)
        assert len(caplog.records) == 2  # one per (source, reason) so far
        now[0] += 1.0
        refusals.note([web])
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert "1 refused for source 'web', reason merge" in lines[0]
    assert "(1 refused for source 'web', reason link" in lines[1]
    assert "1005 refused for source 'web', reason merge" in lines[2]  # those unsaid


# --- the setting ----------------------------------------------------------------------------


def test_a_source_that_does_not_say_is_untrusted() -> None:
    plain = Settings(sources={"web-events": "web", "crm-events": "crm"})
    assert plain.source_trust == {}
    assert plain.trust.of("web") is UNTRUSTED
    declared = Settings(sources={"crm-events": "crm"}, source_trust={"crm": TRUSTED})
    assert declared.trust.of("crm") is TRUSTED
    env = declared.as_env()["TRAITFLOW_SOURCE_TRUST"]
    again = Settings.from_environ(
        {"TRAITFLOW_SOURCES": '{"crm-events": "crm"}', "TRAITFLOW_SOURCE_TRUST": env}
    )
    assert again.trust == declared.trust


@pytest.mark.parametrize(
    ("trust", "problem"),
    [
        ({"crm": "trusted"}, "source_trust: no ingest topic is bound to source 'crm'"),
        ({"web": "yes"}, "'trusted', 'authenticated' or 'untrusted'"),
    ],
)
def test_a_trust_level_for_no_source_or_no_level_stops_the_start(
    trust: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(sources={"web-events": "web"}, source_trust=trust)  # type: ignore[arg-type]


def test_the_demo_trusts_its_source_unless_told_otherwise() -> None:
    base = Settings()
    trusted, env = demo_trust(base, {"PATH": "/bin"})
    assert trusted.trust.of("default") is TRUSTED
    assert env == {"PATH": "/bin", "TRAITFLOW_SOURCE_TRUST": '{"default": "trusted"}'}
    told = {"TRAITFLOW_SOURCE_TRUST": "{}"}
    assert demo_trust(base, told) == (base, told)
