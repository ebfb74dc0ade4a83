"""The spread layout's key names (`traitflow.spread_layout`): which keys share a slot,
and which are under a bucket of their own."""

from __future__ import annotations

from redis.crc import key_slot

from traitflow.key_layout import KeyLayout
from traitflow.spread_layout import SpreadLayout

ENTITY = "user"


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_a_profiles_keys_and_its_buckets_copies_share_the_buckets_slot() -> None:
    layout = SpreadLayout("tf", 1024)
    bucket = layout.profile_bucket(ENTITY, "u-1")
    keys = layout.keys(bucket)
    assert keys.state(ENTITY, "u-1") == f"{{tf.b{bucket}}}:s:user:u-1"
    names = [
        keys.state(ENTITY, "u-1"),
        keys.view(ENTITY, "u-1"),
        keys.version(ENTITY, "u-1"),
        keys.record(ENTITY, "orders", "u-1"),
        keys.outbox("events/3"),
        keys.expiries(ENTITY, "events/3"),
        keys.audience_sizes(ENTITY),
        keys.expiring_members(ENTITY, "vip"),
        keys.profile_counts(ENTITY),
        keys.rules_version(),
        keys.intent("c0ffee"),
        keys.intents(),
    ]
    assert {slot(name) for name in names} == {layout.slot(bucket)}


def test_a_profiles_keys_are_in_its_bucket_whichever_buckets_layout_names_them() -> None:
    layout = SpreadLayout("tf", 1024)
    mine = layout.profile_bucket(ENTITY, "u-1")
    other = (mine + 1) % layout.buckets
    assert layout.keys(other).state(ENTITY, "u-1") == layout.keys(mine).state(ENTITY, "u-1")
    assert layout.bucket_of_key(layout.keys(other).view(ENTITY, "u-1")) == mine


def test_an_identitys_pointer_is_under_the_identitys_bucket() -> None:
    layout = SpreadLayout("tf", 1024)
    key = layout.keys(0).index(ENTITY, "email", "ada@example.com")
    bucket = layout.identity_bucket(ENTITY, "email", "ada@example.com")
    assert key == f"{{tf.b{bucket}}}:i:user:email:ada@example.com"
    assert layout.bucket_of_key(key) == bucket


def test_keys_no_commit_writes_stay_under_the_prefix_tag() -> None:
    layout = SpreadLayout.of("{tf}", 16)
    assert layout.shared == KeyLayout("{tf}")
    assert layout.keys(3).source_job("j1") == "{tf}:sj:j1"
    assert layout.bucket_of_key("{tf}:sj:j1") is None
    assert layout.bucket_of_key("{tf.b7}:s:user:u") == 7


def test_profiles_spread_over_the_slots_of_every_shard() -> None:
    """A thousand profiles fall in most buckets, and their slots in each third of the
    slot range (what a 3-master cluster gives each master)."""
    layout = SpreadLayout("tf", 1024)
    buckets = {layout.profile_bucket(ENTITY, f"u-{n}") for n in range(1000)}
    assert len(buckets) > 600
    thirds = {layout.slot(bucket) * 3 // 16384 for bucket in buckets}
    assert thirds == {0, 1, 2}


def test_a_pointer_is_in_the_bucket_of_the_profile_made_from_its_identity() -> None:
    """So that a read by that identity is one single-slot script."""
    layout = SpreadLayout("tf", 1024)
    assert layout.identity_bucket(ENTITY, "user_id", "u-1") == layout.profile_bucket(ENTITY, "u-1")
    made = "anonymous_id:a-1"  # `IdentityRules.profile_id` of a non-primary identity
    assert layout.identity_bucket(ENTITY, "anonymous_id", "a-1") == layout.profile_bucket(
        ENTITY, made
    )
    assert layout.identity_bucket(ENTITY, "user_id", "x:y") == layout.profile_bucket(
        ENTITY, "user_id:x:y"
    )
