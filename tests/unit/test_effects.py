"""`streams.effects`: a batch's effect splits into the parts a conflict touched and the rest."""

from __future__ import annotations

import orjson

from attributes.events import decode_event
from attributes.identities import DEFAULT_USER, IdentityRules
from attributes.profile import ProfileState
from attributes.stitching import Identity
from streams.effects import Parts, Stitched, split
from streams.records import BatchReport, Identified, Record
from traitflow.store import Conflict, Expected, ProfileWrite

USER = IdentityRules(DEFAULT_USER)


def identified(offset: int, **ids: str) -> Identified:
    value = orjson.dumps({"type": "track", "event": "x", "messageId": f"m-{offset}", **ids})
    event = decode_event(value)
    record = Record("events", 0, offset, value, 0)
    return Identified(record, event, USER.extract(event), USER.previous(event), None, 0)


def write(pid: str) -> ProfileWrite:
    return ProfileWrite(ProfileState(id=pid), b"", b"{}")


def findings(merges: int) -> BatchReport:
    return BatchReport(merges=merges)


def batch() -> Stitched:
    """Three people: u-1 logs in on device a-1 (whose profile exists), u-2 is new,
    u-3 has a profile that a-3 already points to."""
    login = identified(0, userId="u-1", anonymousId="a-1")
    device = identified(1, anonymousId="a-1")
    new = identified(2, userId="u-2")
    known = identified(3, anonymousId="a-3")
    a1, a3 = "anonymous_id:a-1", "u-3"
    pointers: dict[Identity, str] = {("anonymous_id", "a-1"): a1, ("anonymous_id", "a-3"): a3}
    return Stitched(
        [login, device, new, known],
        pointers,
        [write("u-1"), write("u-2"), write("u-3")],
        [a1],
        Expected(
            {("user_id", "u-1"): None, ("user_id", "u-2"): None},
            {a1: 4, "u-1": None, "u-2": None, a3: 7},
        ),
        [a1, "u-3", "u-1", "u-2"],
        {a1: findings(1), "u-2": BatchReport(duplicates=2), "u-3": BatchReport()},
    )


def test_parts_join_what_shares_a_member() -> None:
    parts = Parts()
    parts.join([("user_id", "u-1"), "p-1"])
    parts.join([("email", "e"), "p-2"])
    parts.join(["p-2", ("anonymous_id", "a"), "p-1"])
    parts.join([("user_id", "u-9")])
    assert parts.root("p-1") == parts.root(("email", "e")) == parts.root(("anonymous_id", "a"))
    assert parts.root(("user_id", "u-9")) != parts.root("p-1")
    assert parts.root("never-seen") == "never-seen"


def test_a_conflict_on_a_pointer_redoes_the_events_of_its_part_only() -> None:
    kept, redo = split(batch(), Conflict(pointers=[("user_id", "u-1")]), USER.profile_id)
    # the login and the device's event read a-1 and u-1: they are one part
    assert [item.record.offset for item in redo.events] == [0, 1]
    assert sorted(redo.profiles) == ["anonymous_id:a-1", "u-1"]
    assert [item.record.offset for item in kept.events] == [2, 3]
    assert [w.state.id for w in kept.writes] == ["u-2", "u-3"]
    assert kept.removed == []
    assert kept.expected == Expected({("user_id", "u-2"): None}, {"u-2": None, "u-3": 7})
    assert sorted(kept.profiles) == ["u-2", "u-3"]
    assert kept.findings.keys() == {"u-2", "u-3"}
    assert kept.pointers == {("anonymous_id", "a-3"): "u-3"}


def test_a_conflict_on_a_profile_reaches_the_events_whose_identities_point_to_it() -> None:
    kept, redo = split(batch(), Conflict(profiles=["u-3"]), USER.profile_id)
    assert [item.record.offset for item in redo.events] == [3]
    assert redo.profiles == ["u-3"]
    assert [w.state.id for w in kept.writes] == ["u-1", "u-2"]
    assert kept.removed == ["anonymous_id:a-1"]
    assert kept.expected.versions == {"anonymous_id:a-1": 4, "u-1": None, "u-2": None}


def test_a_new_identity_s_part_holds_the_profile_it_would_make() -> None:
    """u-2 pointed nowhere: its part is the profile id it makes, which a conflict on
    that id's version (another worker made it meanwhile) must find."""
    kept, redo = split(batch(), Conflict(profiles=["u-2"]), USER.profile_id)
    assert [item.record.offset for item in redo.events] == [2]
    assert [w.state.id for w in kept.writes] == ["u-1", "u-3"]


def test_a_conflict_naming_nothing_the_batch_read_redoes_all_of_it() -> None:
    kept, redo = split(batch(), Conflict(profiles=["someone-else"]), USER.profile_id)
    assert len(redo.events) == 4
    assert (kept.events, kept.writes, kept.removed, kept.findings) == ([], [], [], {})


def test_only_committed_findings_are_reported() -> None:
    kept, _ = split(batch(), Conflict(profiles=["anonymous_id:a-1"]), USER.profile_id)
    report = BatchReport()
    kept.report_to(report)
    assert (report.profiles_written, report.duplicates, report.merges) == (2, 2, 0)


def test_a_conflict_names_every_failed_check() -> None:
    conflict = Conflict([("email", "e@x.io"), ("anonymous_id", "a")], ["u-2", "u-1"])
    assert conflict.pointers == {("email", "e@x.io"), ("anonymous_id", "a")}
    assert conflict.profiles == {"u-1", "u-2"}
    assert str(conflict) == (
        "anonymous_id 'a' moved; email 'e@x.io' moved; profile 'u-1' changed; profile 'u-2' changed"
    )
