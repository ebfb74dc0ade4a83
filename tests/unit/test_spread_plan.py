"""What a commit of the spread layout claims, commits per bucket and finalizes, worked
out without a server (`traitflow.spread_plan`, `traitflow.spread_claims`)."""

from __future__ import annotations

from typing import Any

from redis.crc import key_slot

from attributes.profile import ProfileState
from traitflow import spread_claims as claims
from traitflow.spread_claims import CLAIMED, LOCKED
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_plan import bucket_conflict, plan_commit
from traitflow.store import Conflict, Expected, ProfileWrite

LAYOUT = SpreadLayout("tf", 64)
NOW = 1_794_394_800_000
DEADLINE = NOW + 10_000
DAY = 86_400_000


def write(pid: str, **fields: Any) -> ProfileWrite:
    state = ProfileState(id=pid, version=3, identities={"user_id": [pid]})
    return ProfileWrite(state, b"state", b"view", **fields)


def plan(writes: list[ProfileWrite], **options: Any) -> Any:
    return plan_commit(
        LAYOUT,
        "user",
        writes,
        now=NOW,
        commit="c1",
        deadline=DEADLINE,
        bucket_ms=DAY,
        dedupe_window_ms=7 * DAY,
        **options,
    )


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def two_buckets() -> tuple[str, str]:
    """Two profile ids in different buckets."""
    first = "u-0"
    other = next(
        f"u-{n}"
        for n in range(1, 1000)
        if LAYOUT.profile_bucket("user", f"u-{n}") != LAYOUT.profile_bucket("user", first)
    )
    return first, other


def test_writes_without_pointers_are_one_single_slot_script_per_bucket() -> None:
    a, b = two_buckets()
    spread = plan([write(a), write(b)], expected=Expected(versions={a: 2, b: None}))
    assert not spread.crosses_slots
    assert spread.claims == []
    assert len(spread.buckets) == 2
    for bucket, part in spread.buckets.items():
        keys = [*part.checks, *part.commands.keys]
        assert {slot(key) for key in keys} == {LAYOUT.slot(bucket)}
        assert part.forward == []
    a_part = spread.buckets[LAYOUT.profile_bucket("user", a)]
    assert a_part.checks[LAYOUT.keys(0).version("user", a)][0] == b"2"


def test_a_new_pointer_is_claimed_then_set_by_the_intent_of_its_profiles_bucket() -> None:
    a, _ = two_buckets()
    spread = plan(
        [write(a, identities=[("email", "a@x")])],
        expected=Expected(pointers={("email", "a@x"): None}, versions={a: None}),
    )
    pointer = LAYOUT.keys(0).index("user", "email", "a@x")
    bucket = LAYOUT.profile_bucket("user", a)
    (claim,) = spread.claims
    assert (claim.key, claim.want, claim.guarded, claim.owner) == (
        pointer,
        b"",
        ("email", "a@x"),
        bucket,
    )
    assert claims.held(claim.value + b"") == claims.Held(CLAIMED, "c1", DEADLINE, bucket, b"")
    part = spread.buckets[bucket]
    assert part.forward == [claims.point(pointer, "c1", a)]
    assert part.back == [claims.release(pointer, "c1")]
    # the pointer is not in the bucket's script; the intent is, and must be new
    assert pointer not in part.commands.keys
    intent = LAYOUT.keys(bucket).intent("c1")
    assert part.checks[intent] == (b"", None)
    assert intent in part.commands.keys


def test_a_merged_profile_is_locked_and_dropped_by_the_survivors_bucket() -> None:
    survivor, merged = two_buckets()
    spread = plan(
        [write(survivor, identities=[("anonymous_id", "a-1")], absorbed=[merged])],
        removed=[merged],
        expected=Expected(versions={survivor: 3, merged: 5}),
    )
    keys = LAYOUT.keys(0)
    lock = next(c for c in spread.claims if c.lock)
    bucket = LAYOUT.profile_bucket("user", survivor)
    assert (lock.key, lock.want, lock.guarded, lock.owner) == (
        keys.version("user", merged),
        b"5",
        merged,
        bucket,
    )
    assert claims.held(lock.value + b"5") == claims.Held(LOCKED, "c1", DEADLINE, bucket, b"5")
    # the pointer was not checked (it pointed at the merged, loaded profile): any value
    pointer = next(c for c in spread.claims if not c.lock)
    assert pointer.want is None
    part = spread.buckets[bucket]
    drop = claims.drop(
        keys.version("user", merged), "c1", [keys.state("user", merged), keys.view("user", merged)]
    )
    assert drop in part.forward
    assert claims.unlock(keys.version("user", merged), "c1") in part.back
    assert keys.version("user", merged) not in part.checks


def test_applied_message_ids_go_to_their_own_buckets_after_the_commit() -> None:
    a, _ = two_buckets()
    mids = [f"m-{n}" for n in range(20)]
    spread = plan([write(a, messages=[("web", m) for m in mids])])
    part = spread.buckets[LAYOUT.profile_bucket("user", a)]
    assert not any(arg == "SADD" for arg in part.commands.args)
    remembered = {str(m): op[1] for op in part.forward if op[0] == "SADD" for m in op[3:]}
    assert set(remembered) == set(mids)
    for mid, key in remembered.items():
        assert LAYOUT.bucket_of_key(str(key)) == LAYOUT.message_bucket("web", mid)


def test_an_expiring_profiles_new_pointer_gets_its_lifetime_after_it_is_set() -> None:
    a, _ = two_buckets()
    linked = write(a, identities=[("anonymous_id", "a-1")], ttl_ms=60_000)
    linked.state.identities = {"anonymous_id": ["a-1"]}
    spread = plan([linked])
    part = spread.buckets[LAYOUT.profile_bucket("user", a)]
    pointer = LAYOUT.keys(0).index("user", "anonymous_id", "a-1")
    steps = [(op[0], op[1]) for op in part.forward]
    assert steps.index(("POINT", pointer)) < steps.index(("PEXPIREIF", pointer))


def test_a_pointer_only_checked_is_held_and_released_either_way() -> None:
    a, _ = two_buckets()
    spread = plan([write(a)], expected=Expected(pointers={("email", "b@x"): None}))
    (claim,) = spread.claims
    assert claim.owner is None
    assert claim.want == b""
    assert spread.released == [claims.release(claim.key, "c1")]


def test_a_refused_bucket_names_what_changed_or_every_profile_if_rolled_back() -> None:
    a, _ = two_buckets()
    spread = plan([write(a, identities=[("email", "a@x")])], expected=Expected(versions={a: 2}))
    part = spread.buckets[LAYOUT.profile_bucket("user", a)]
    wants = [want for want, _ in part.checks.values()]
    changed = [b"3" if want == b"2" else want or None for want in wants]
    conflict = bucket_conflict(part, changed)
    assert isinstance(conflict, Conflict)
    assert conflict.profiles == {a}
    assert not conflict.pointers
    aborted = [claims.ABORTED if want == b"" else want for want in wants]
    conflict = bucket_conflict(part, aborted)  # the intent's check: rolled back
    assert isinstance(conflict, Conflict)
    assert conflict.profiles == {a}
    assert bucket_conflict(part, [want or None for want in wants]) is None


def test_held_values_read_as_their_old_value() -> None:
    value = claims.held_value(CLAIMED, "c9", 123, 4) + b"u-1"
    assert claims.plain(value) == b"u-1"
    assert claims.plain(claims.held_value(CLAIMED, "c9", 123, -1)) is None
    assert claims.plain(b"u-2") == b"u-2"
    assert claims.held(b"u-2") is None
    ops = [claims.point("{tf.b1}:i:k", "c9", "u-1"), claims.drop("{tf.b2}:n", "c9", ["{tf.b2}:s"])]
    keys, args = claims.finalize_arguments(ops)
    assert keys == ["{tf.b1}:i:k", "{tf.b2}:n", "{tf.b2}:s"]
    assert args[0] == 4
    assert args[5] == 4
    assert claims.decode_intent(claims.encode_intent(ops)) == ops


def test_a_merged_expiring_profile_leaves_the_expiring_members_of_its_own_bucket() -> None:
    """Its membership was counted in its bucket's sorted set, not the survivor's."""
    survivor, merged = two_buckets()
    kept = write(survivor, absorbed=[merged], departed_expiring=[(merged, "vip")])
    kept.categories_departed_expiring = [(merged, "profile")]
    spread = plan([kept], removed=[merged], expected=Expected(versions={merged: 1}))
    part = spread.buckets[LAYOUT.profile_bucket("user", survivor)]
    theirs = LAYOUT.of_profile("user", merged)
    assert claims.uncount(theirs.expiring_members("user", "vip"), [merged]) in part.forward
    assert claims.uncount(theirs.expiring_profiles("user", "profile"), [merged]) in part.forward
    zrems = [n for n, arg in enumerate(part.commands.args) if arg == "ZREM"]
    assert all(part.commands.args[n + 2] != merged for n in zrems)


def test_a_source_jobs_command_is_counted_by_its_profiles_bucket() -> None:
    """The count is written by the bucket's own script (one slot), never under the
    shared tag the job's hash is in."""
    a, b = two_buckets()
    used = {LAYOUT.profile_bucket("user", p) for p in (a, b)}
    other = next(
        f"v-{n}" for n in range(1000) if LAYOUT.profile_bucket("user", f"v-{n}") not in used
    )
    spread = plan([write(a, job="j1"), write(b, job="j1"), write(other)])
    for pid in (a, b):
        bucket = LAYOUT.profile_bucket("user", pid)
        part = spread.buckets[bucket]
        tallies = LAYOUT.keys(bucket).source_job_tallies()
        assert tallies == f"{{tf.b{bucket}}}:sjt"
        assert tallies in part.commands.keys
        assert ["HINCRBY", tallies, "j1", 1] in _commands(part.commands.args)
        assert {slot(key) for key in part.commands.keys} == {LAYOUT.slot(bucket)}
        assert not any(str(key).startswith("{tf}:sj") for key in part.commands.keys)
    untouched = spread.buckets[LAYOUT.profile_bucket("user", other)]
    assert not any(c[0] == "HINCRBY" for c in _commands(untouched.commands.args))


def _commands(args: list[Any]) -> list[list[Any]]:
    """A `CommandList`'s arguments as its commands (each: its length, then itself)."""
    found, at = [], 0
    while at < len(args):
        size = int(args[at])
        found.append(list(args[at + 1 : at + 1 + size]))
        at += size + 1
    return found
