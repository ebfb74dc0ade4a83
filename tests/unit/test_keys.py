"""API keys and the token bucket, without I/O: format, hashing, scopes, cache, limits,
and the Redis keys the API names."""

from __future__ import annotations

import fnmatch
import inspect

import pytest

from api import ratelimit
from api.auth import Principal
from api.key_layout import ApiKeyLayout
from api.keys import (
    ApiKey,
    InvalidKeyParameters,
    MemoryKeyStore,
    hash_secret,
    new_key,
    parse_token,
)
from api.ratelimit import Bucket
from traitflow.key_layout import KeyLayout

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_key_parses_back_to_its_id_and_secret() -> None:
    record, token = new_key("ci", collections=["users"])
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert token == f"tf_{key_id}_{secret}"
    assert key_id == record.key_id
    assert record.verifies(secret)
    assert record.collections == frozenset({"users"})


def test_the_record_holds_a_hash_never_the_secret() -> None:
    record, token = new_key("ci", admin=True)
    _, secret = parse_token(token) or ("", "")
    assert record.secret_hash == hash_secret(secret)
    assert len(record.secret_hash) == 64
    assert secret not in repr(record)
    assert secret not in record.secret_hash


def test_secrets_and_ids_are_random() -> None:
    parsed = [parse_token(new_key("x", admin=True)[1]) for _ in range(50)]
    assert len({pair[0] for pair in parsed if pair is not None}) == 50
    assert len({pair[1] for pair in parsed if pair is not None}) == 50


@pytest.mark.parametrize(
    "token",
    [
        "",
        "tf_",
        "tf_0123456789ab",
        "tf_0123456789ab_short",
        "xx_0123456789ab_" + "a" * 43,
        "tf_0123456789AB_" + "a" * 43,  # ids are lowercase hex
        "tf_0123456789a_" + "a" * 43,
        "tf_0123456789ab_" + "a" * 44,
        "tf_0123456789ab_" + "a" * 42 + "!",
        " tf_0123456789ab_" + "a" * 43,
    ],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_token(token) is None


def test_a_secret_with_underscores_parses() -> None:
    assert parse_token("tf_0123456789ab_" + "_" * 43) == ("0123456789ab", "_" * 43)


def test_a_wrong_secret_does_not_verify() -> None:
    record, token = new_key("ci", admin=True)
    _, secret = parse_token(token) or ("", "")
    assert not record.verifies(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not record.verifies("")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": ""}, "invalid key name"),
        ({"name": "x" * 101}, "invalid key name"),
        ({"name": "bad\nname"}, "invalid key name"),
        ({"name": "ok", "rate_per_s": 0.0}, "rate must be > 0"),
        ({"name": "ok", "rate_per_s": -1.0}, "rate must be > 0"),
        ({"name": "ok", "burst": 0}, "burst must be >= 1"),
    ],
)
def test_bad_key_parameters_are_refused(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidKeyParameters, match=message):
        new_key(**arguments)  # type: ignore[arg-type]


def test_scopes() -> None:
    reader = Principal("k", collections=frozenset({"users"}), destinations=frozenset({"d1"}))
    assert reader.may_read_collection("users")
    assert not reader.may_read_collection("accounts")
    assert reader.may_read_destination("d1")
    assert not reader.may_read_destination("d2")
    admin = Principal("a", admin=True)
    assert admin.may_read_collection("anything")
    assert admin.may_read_destination("anything")
    assert not Principal("n").may_read_collection("users")


def test_principal_of_a_record_and_the_scopes_description() -> None:
    record = ApiKey("0123456789ab", "n", "h", collections=frozenset({"b", "a"}))
    assert Principal.of(record) == Principal("0123456789ab", False, frozenset({"a", "b"}))
    assert record.scopes() == "collections a, b"
    assert ApiKey("k", "n", "h", admin=True).scopes() == "admin"
    both = ApiKey("k", "n", "h", collections=frozenset({"u"}), destinations=frozenset({"d"}))
    assert both.scopes() == "collections u; destinations d"


async def test_lookups_are_cached_for_the_ttl() -> None:
    clock = Clock()
    keys = MemoryKeyStore(cache_ttl_s=2.0, clock=clock)
    record, _ = new_key("ci", admin=True)
    await keys.create(record)
    assert await keys.lookup(record.key_id) == record
    del keys.records[record.key_id]  # as if another process revoked it
    clock.now += 1.9
    assert await keys.lookup(record.key_id) == record  # still trusted
    clock.now += 0.2
    assert await keys.lookup(record.key_id) is None  # re-read: gone


async def test_unknown_ids_are_not_cached() -> None:
    keys = MemoryKeyStore(cache_ttl_s=60.0)
    record, _ = new_key("ci", admin=True)
    assert await keys.lookup(record.key_id) is None
    await keys.create(record)
    assert await keys.lookup(record.key_id) == record


async def test_a_revoke_takes_effect_at_once_in_its_own_process() -> None:
    keys = MemoryKeyStore(cache_ttl_s=60.0)
    record, _ = new_key("ci", admin=True)
    await keys.create(record)
    assert await keys.lookup(record.key_id) == record
    assert await keys.revoke(record.key_id)
    assert await keys.lookup(record.key_id) is None
    assert not await keys.revoke(record.key_id)
    assert await keys.list_keys() == []


def test_a_bucket_starts_full_and_allows_the_burst() -> None:
    bucket = None
    for _ in range(3):
        bucket, wait = ratelimit.take(bucket, 0.0, rate=1.0, burst=3)
        assert wait == 0.0
    assert bucket is not None
    assert bucket.tokens == pytest.approx(0.0)
    _, wait = ratelimit.take(bucket, 0.0, rate=1.0, burst=3)
    assert wait == pytest.approx(1.0)


def test_a_bucket_refills_at_the_rate() -> None:
    bucket = Bucket(tokens=0.0, at=10.0)
    refused, wait = ratelimit.take(bucket, 10.25, rate=2.0, burst=5)
    assert refused.tokens == pytest.approx(0.5)  # 0.25 s at 2/s; a refusal takes nothing
    assert wait == pytest.approx(0.25)  # the missing half token, at 2/s
    allowed, wait = ratelimit.take(refused, 10.5, rate=2.0, burst=5)
    assert wait == 0.0
    assert allowed.tokens == pytest.approx(0.0)


def test_a_bucket_never_holds_more_than_the_burst() -> None:
    bucket, _ = ratelimit.take(Bucket(tokens=1.0, at=0.0), 1e6, rate=100.0, burst=5)
    assert bucket.tokens == pytest.approx(4.0)


def test_time_going_backwards_adds_nothing() -> None:
    bucket, wait = ratelimit.take(Bucket(tokens=0.5, at=10.0), 5.0, rate=1.0, burst=5)
    assert wait == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(0.5)


@pytest.mark.parametrize(("wait", "header"), [(0.001, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert ratelimit.retry_after(wait) == header


def test_an_idle_bucket_expires_once_it_would_be_full() -> None:
    assert ratelimit.idle_expiry_ms(rate=100.0, burst=200) == 3000
    assert ratelimit.idle_expiry_ms(rate=0.5, burst=1) == 3000


# --- where keys are kept: the API's own Redis keys ---------------------------------------


def _kinds(layout: KeyLayout | ApiKeyLayout) -> dict[str, str]:
    """Each key a layout names -> its second part (`tf:k:...` -> `k`)."""
    kinds = {}
    for name in dir(type(layout)):
        if name.startswith("_") or name in ("prefix", "all_keys"):
            continue
        attribute = getattr(layout, name)
        if callable(attribute):
            attribute = attribute(*["x"] * len(inspect.signature(attribute).parameters))
        assert isinstance(attribute, str), name
        prefix, kind, *_ = attribute.split(":")
        assert prefix == layout.prefix, name
        kinds[name] = kind
    return kinds


def test_the_api_names_its_keys_under_the_core_prefix() -> None:
    keys = ApiKeyLayout("tf")
    assert keys.api_key("0123456789ab") == "tf:k:0123456789ab"
    assert keys.api_key_ids() == "tf:ks"
    assert keys.rate_bucket("0123456789ab") == "tf:r:0123456789ab"
    # one SCAN pattern still finds everything a deployment stores
    pattern = KeyLayout("tf").all_keys()
    assert all(fnmatch.fnmatchcase(key, pattern) for key in ("tf:ks", keys.api_key("x")))


def test_no_core_key_takes_a_name_of_the_apis() -> None:
    api = _kinds(ApiKeyLayout("tf"))
    assert set(api.values()) == {"k", "ks", "r"}
    clashes = {name: kind for name, kind in _kinds(KeyLayout("tf")).items() if kind in api.values()}
    assert not clashes, f"KeyLayout keys named like the API's (api.key_layout): {clashes}"
