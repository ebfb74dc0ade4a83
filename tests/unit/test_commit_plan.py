"""What a commit of the Redis store checks and writes, worked out without a server."""

from __future__ import annotations

from typing import Any, cast

from attributes.profile import ProfileState
from traitflow.commit_plan import CommitPlan
from traitflow.commit_script import CommandList
from traitflow.key_layout import KeyLayout
from traitflow.store import Conflict, Expected, Outgoing, ProfileWrite, RulesChanged

KEYS = KeyLayout("tf")
NOW = 1_794_394_800_000


class Recorder:
    """Stands in for a MULTI pipeline: keeps the commands queued, in order."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.commands.append((name, args))


def write(pid: str = "u-1", **fields: Any) -> ProfileWrite:
    state = ProfileState(id=pid, version=3, identities={"user_id": [pid]})
    return ProfileWrite(state, b"state", b"view", **fields)


def test_a_write_sets_its_state_view_version_and_identities() -> None:
    plan = CommitPlan.of(KEYS, "user", [write(identities=[("email", "a@x")])], now=NOW)
    assert plan.sets == {
        "tf:s:user:u-1": b"state",
        "tf:v:user:u-1": b"view",
        "tf:n:user:u-1": "3",
        "tf:i:user:email:a@x": "u-1",
    }
    assert plan.checks == {}
    assert plan.deletes == []


def test_a_removed_profile_loses_every_key_including_its_mapped_records() -> None:
    kept = write(records={"users": b"doc"})
    plan = CommitPlan.of(KEYS, "user", [kept], removed=["anon"], now=NOW)
    assert plan.deletes == [
        "tf:s:user:anon",
        "tf:v:user:anon",
        "tf:n:user:anon",
        "tf:c:user:users:anon",
    ]


def test_an_expiring_write_gives_every_key_it_owns_the_lifetime() -> None:
    plan = CommitPlan.of(KEYS, "user", [write(ttl_ms=60_000)], now=NOW)
    assert plan.expiring == dict.fromkeys(
        ["tf:s:user:u-1", "tf:v:user:u-1", "tf:n:user:u-1", "tf:i:user:user_id:u-1"], 60_000
    )


def test_the_conflict_names_every_check_that_failed() -> None:
    expected = Expected(pointers={("email", "a@x"): None}, versions={"u-1": 2, "u-2": None})
    plan = CommitPlan.of(KEYS, "user", [write()], expected=expected, now=NOW)
    assert list(plan.checks) == ["tf:i:user:email:a@x", "tf:n:user:u-1", "tf:n:user:u-2"]
    assert plan.conflict([None, b"2", None]) is None
    conflict = plan.conflict([b"u-9", b"2", b"1"])
    assert isinstance(conflict, Conflict)
    assert conflict.pointers == frozenset({("email", "a@x")})
    assert conflict.profiles == frozenset({"u-2"})


def test_the_queue_dedupes_counts_and_publishes_in_the_same_transaction() -> None:
    message = Outgoing("changes", b"u-1", b"{}")
    entered = write(
        messages=[("web", "m-1")],
        expiry=("events/0", NOW + 1000),
        source="events/0",
        outgoing=[message],
    )
    entered.entered = ["buyers"]
    entered.state.audiences = ["buyers"]
    plan = CommitPlan.of(KEYS, "user", [entered], now=NOW)
    recorder = Recorder()
    plan.queue(cast(CommandList, recorder), bucket_ms=1000, dedupe_window_ms=5000)
    names = [name for name, _ in recorder.commands]
    assert names == ["mset", "zadd", "sadd", "pexpireat", "hincrby", "xadd"]
    bucket = NOW // 1000
    assert recorder.commands[2] == ("sadd", (f"tf:d:user:web:{bucket}", "m-1"))
    assert recorder.commands[3] == ("pexpireat", (f"tf:d:user:web:{bucket}", NOW + 1000 + 5000))
    assert recorder.commands[4] == ("hincrby", ("tf:a:user", "buyers", 1))
    assert recorder.commands[5][1][0] == "tf:o:events/0"


def test_an_expiring_member_is_scored_by_its_deadline_and_the_due_ones_pruned() -> None:
    anonymous = write("anon", ttl_ms=60_000)
    anonymous.entered = anonymous.state.audiences = ["buyers"]
    plan = CommitPlan.of(KEYS, "user", [anonymous], now=NOW)
    recorder = Recorder()
    plan.queue(cast(CommandList, recorder), bucket_ms=1000, dedupe_window_ms=5000)
    counted = [c for c in recorder.commands if c[0] in {"zadd", "sadd", "zremrangebyscore"}]
    assert counted == [
        ("zadd", ("tf:ax:user:buyers", {"anon": NOW + 60_000})),
        ("sadd", ("tf:ax:user", "buyers")),
        ("zremrangebyscore", ("tf:ax:user:buyers", "-inf", NOW)),
    ]


def test_a_commit_at_an_older_rules_version_is_refused_whatever_else_changed() -> None:
    expected = Expected(versions={"u-1": 2}, rules_version=3)
    plan = CommitPlan.of(KEYS, "user", [write()], expected=expected, now=NOW)
    assert plan.checks["tf:ca:v"][0] == b"3"
    assert plan.conflict([b"2", b"3"]) is None
    changed = plan.conflict([b"1", b"4"])
    assert isinstance(changed, RulesChanged)
    assert changed.computed_with == 3
    first = CommitPlan.of(KEYS, "user", [write()], expected=Expected(rules_version=0), now=NOW)
    assert first.checks["tf:ca:v"][0] == b""  # version 0: the key does not exist yet
