"""Where `traitflow redis copy-keys` puts each kind of key on the spread layout
(`traitflow.redis_copy_spread.placement`): where the spread layout's own code looks for
it, for every kind of key in `traitflow.key_layout`'s table that a single Redis holds."""

from __future__ import annotations

from traitflow.key_layout import KeyLayout
from traitflow.redis_copy_spread import Derived, Move, Split, placement
from traitflow.spread_layout import SpreadLayout

OLD = KeyLayout("tf")
LAYOUT = SpreadLayout("tf", 64)
NEW = LAYOUT.keys(0)


def place(key: str) -> Move | Split | Derived:
    return placement(key.removeprefix("tf:"), LAYOUT)


def test_a_key_of_one_profile_identity_tombstone_or_request_moves_to_its_bucket() -> None:
    pid = "anonymous_id:a-1"  # an id with a colon
    assert place(OLD.state("user", pid)) == Move(NEW.state("user", pid))
    assert place(OLD.view("user", "u-1")) == Move(NEW.view("user", "u-1"))
    assert place(OLD.version("user", pid)) == Move(NEW.version("user", pid))
    assert place(OLD.record("user", "users", pid)) == Move(NEW.record("user", "users", pid))
    email = "a:b@example.com"
    assert place(OLD.index("user", "email", email)) == Move(NEW.index("user", "email", email))
    assert place(OLD.tombstone("user", "ab12")) == Move(NEW.tombstone("user", "ab12"))
    assert place(OLD.erasure("req-9")) == Move(NEW.erasure("req-9"))
    # and those are where the layout's readers look: the profile's own bucket
    bucket = LAYOUT.profile_bucket("user", pid)
    assert NEW.state("user", pid).startswith(LAYOUT.tag(bucket))


def test_per_bucket_copies_with_one_source_key_go_to_bucket_zero() -> None:
    zero = LAYOUT.keys(0)
    assert place(OLD.outbox("events/3")) == Move(zero.outbox("events/3"))
    assert place(OLD.audience_sizes("user")) == Move(zero.audience_sizes("user"))
    assert place(OLD.profile_counts("user")) == Move(zero.profile_counts("user"))


def test_keys_of_many_are_split_member_by_member() -> None:
    index = place(OLD.expiries("user", "events/3"))
    assert isinstance(index, Split)
    assert index.marker is None
    assert index.target("u-7") == LAYOUT.of_profile("user", "u-7").expiries("user", "events/3")

    applied = place(OLD.messages("user", "web:eu", 4242))
    assert isinstance(applied, Split)
    bucket = LAYOUT.message_bucket("web:eu", "m-1")
    assert applied.target("m-1") == LAYOUT.keys(bucket).messages("user", "web:eu", 4242)

    members = place(OLD.expiring_members("user", "buyers"))
    assert isinstance(members, Split)
    assert members.marker is not None
    at = LAYOUT.of_profile("user", "a-1")
    assert members.target("a-1") == at.expiring_members("user", "buyers")
    assert members.marker("a-1") == (at.expiring_audiences("user"), "buyers")

    counted = place(OLD.expiring_profiles("user", "profile"))
    assert isinstance(counted, Split)
    assert counted.marker is not None
    assert counted.marker("a-1") == (at.expiring_categories("user"), "profile")

    assert place(OLD.expiring_audiences("user")) == Derived()
    assert place(OLD.expiring_categories("user")) == Derived()


def test_everything_else_goes_under_the_shared_tag() -> None:
    shared = LAYOUT.shared
    assert place(OLD.rules_version()) == Move(shared.rules_version())
    assert place(OLD.computed_attributes()) == Move(shared.computed_attributes())
    assert place(OLD.log_checkpoints("events/3")) == Move(shared.log_checkpoints("events/3"))
    assert place(OLD.source_job("j-1")) == Move(shared.source_job("j-1"))
    assert place("tf:k:key-1") == Move("{tf}:k:key-1")  # the API's keys
