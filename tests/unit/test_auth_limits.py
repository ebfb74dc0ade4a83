"""Abuse stays in the API process: the memory of unknown key ids, the failure bucket
per client address, whose address a request is, the decisions `api.auth.admit` makes
with them (counted by what the key store was asked), and the gate that lets a read
through only behind an allowed charge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from api.app import create_app
from api.auth_limits import FailureLimits, UnknownKeys, client_address
from api.errors import ApiError
from api.gate import GET, PENDING, Charge, GatedReads, gated
from api.key_layout import ApiKeyLayout
from api.keys import MemoryKeyStore, new_key
from api.state import state_of
from attributes.profile import ProfileState, encode_state
from tests.unit.api_support import CountingKeys, add_key, bearer, keys_of, serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.resp import Address, Arg, RespClient, Script
from traitflow.store import ProfileWrite

USER = "/v1/collections/users/records/id/u-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# UnknownKeys


def test_an_unknown_key_is_remembered_for_the_ttl() -> None:
    clock = Clock()
    unknown = UnknownKeys(5.0, clock=clock)
    assert "a" not in unknown
    unknown.add("a")
    clock.now += 4.9
    assert "a" in unknown
    clock.now += 0.1
    assert "a" not in unknown
    assert len(unknown) == 0  # forgotten, not only ignored


def test_a_ttl_of_zero_remembers_nothing() -> None:
    unknown = UnknownKeys(0.0)
    unknown.add("a")
    assert "a" not in unknown
    assert len(unknown) == 0


def test_unknown_keys_are_bounded_the_oldest_going_first() -> None:
    clock = Clock()
    unknown = UnknownKeys(60.0, capacity=3, clock=clock)
    for key_id in ("a", "b", "c"):
        unknown.add(key_id)
        clock.now += 1
    unknown.add("a")  # again: now the newest
    unknown.add("d")
    assert len(unknown) == 3
    assert "b" not in unknown
    assert all(key_id in unknown for key_id in ("a", "c", "d"))


# FailureLimits


def test_an_address_fails_its_burst_then_waits_for_the_rate() -> None:
    clock = Clock()
    limits = FailureLimits(0.5, 3, clock=clock)
    assert limits.waiting("1.2.3.4") == 0.0
    assert [limits.fail("1.2.3.4") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limits.waiting("1.2.3.4") == pytest.approx(2.0)  # a failure every 2 s
    assert limits.fail("1.2.3.4") == pytest.approx(2.0)
    assert limits.waiting("5.6.7.8") == 0.0  # another address: its own bucket
    clock.now += 2.0
    assert limits.waiting("1.2.3.4") == 0.0
    assert limits.fail("1.2.3.4") == 0.0
    assert limits.fail("1.2.3.4") > 0


def test_waiting_takes_nothing() -> None:
    limits = FailureLimits(1.0, 1, clock=Clock())
    for _ in range(5):
        assert limits.waiting("a") == 0.0
    assert limits.fail("a") == 0.0
    assert limits.fail("a") > 0


def test_failure_buckets_are_bounded_the_oldest_going_first() -> None:
    limits = FailureLimits(0.001, 1, capacity=2, clock=Clock())
    for address in ("a", "b", "c"):
        limits.fail(address)
    assert len(limits) == 2
    assert limits.waiting("a") == 0.0  # dropped: full again
    assert limits.waiting("b") > 0
    assert limits.waiting("c") > 0


def test_a_refund_gives_back_one_token_up_to_the_burst() -> None:
    limits = FailureLimits(0.001, 2, clock=Clock())
    limits.refund("a")  # nothing taken: nothing to give back
    assert len(limits) == 0
    limits.fail("a")
    limits.fail("a")
    assert limits.waiting("a") > 0
    limits.refund("a")
    assert limits.waiting("a") == 0.0
    limits.refund("a")
    limits.refund("a")
    assert limits.fail("a") == 0.0
    assert limits.fail("a") == 0.0  # two tokens, never more than the burst
    assert limits.fail("a") > 0


# client_address


def request_from(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "headers": headers, "client": (peer, 1234)})


@pytest.mark.parametrize(
    ("forwarded", "proxies", "address"),
    [
        ((), 0, "10.0.0.1"),
        (("6.6.6.6",), 0, "10.0.0.1"),  # not behind a proxy: the header is the client's
        ((), 1, "10.0.0.1"),  # no header: the peer
        (("6.6.6.6, 1.2.3.4",), 1, "1.2.3.4"),  # what our proxy wrote, not the client
        (("6.6.6.6", "1.2.3.4"), 1, "1.2.3.4"),  # the header repeated: one list
        (("6.6.6.6, 1.2.3.4, 10.1.1.1",), 2, "1.2.3.4"),
        (("1.2.3.4",), 2, "1.2.3.4"),  # fewer entries than proxies: the first
        ((" , ",), 1, "10.0.0.1"),
    ],
)
def test_the_client_address(forwarded: tuple[str, ...], proxies: int, address: str) -> None:
    assert client_address(request_from("10.0.0.1", *forwarded), proxies) == address


# what admit asks the key store


@pytest.fixture
async def app() -> FastAPI:
    store = MemoryProfileStore()
    state = ProfileState(id="u-1")
    await store.save("user", [ProfileWrite(state, encode_state(state), b'{"id":"u-1"}')])
    settings = Settings(
        api_negative_key_ttl_s=60.0, api_auth_failures_per_s=0.001, api_auth_failures_burst=3
    )
    return create_app(settings, store=store, keys=CountingKeys())


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app, key=None) as client:
        yield client


def refusals(app: FastAPI, reason: str) -> float:
    value = state_of(app).metrics.registry.get_sample_value(
        "traitflow_api_refusals_total", {"reason": reason}
    )
    return value or 0.0


@pytest.mark.anyio
async def test_an_unknown_key_is_looked_up_once(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    token = new_key("never stored")[1]
    statuses = [(await anonymous.get(USER, headers=bearer(token))).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    assert keys_of(app).gets == [token.split("_")[1]]
    assert refusals(app, "unknown_key_cached") == 2


@pytest.mark.anyio
async def test_past_its_failures_an_address_gets_429s_that_ask_nothing(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    tokens = [new_key("random")[1] for _ in range(5)]
    answers = [await anonymous.get(USER, headers=bearer(token)) for token in tokens]
    assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
    assert answers[3].json() == {"error": "too many failed authentications from this address"}
    assert answers[3].headers["retry-after"] == "1000"
    assert len(keys_of(app).gets) == 3  # the throttled ones were not looked up
    assert refusals(app, "auth_failures") == 2
    # failures that cost no lookup are refused alike once the address is out
    missing = await anonymous.get(USER)
    assert missing.status_code == 429


@pytest.mark.anyio
async def test_concurrent_random_tokens_send_no_more_lookups_than_the_burst(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    tokens = [new_key("random")[1] for _ in range(20)]
    answers = await asyncio.gather(
        *(anonymous.get(USER, headers=bearer(token)) for token in tokens)
    )
    assert sorted(a.status_code for a in answers) == [401] * 3 + [429] * 17
    assert len(keys_of(app).gets) == 3


@pytest.mark.anyio
async def test_a_valid_key_read_for_the_first_time_costs_its_address_nothing(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    for _ in range(3):
        token = await add_key(keys_of(app), collections=["users"])
        assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    assert len(state_of(app).auth_failures) == 1
    assert state_of(app).auth_failures.waiting("127.0.0.1") == 0.0
    statuses = [
        (await anonymous.get(USER, headers=bearer(new_key("x")[1]))).status_code for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]  # the whole burst is still there


@pytest.mark.anyio
async def test_a_key_already_read_works_from_a_throttled_address(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    token = await add_key(keys_of(app), collections=["users"])
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    for _ in range(3):
        await anonymous.get(USER, headers=bearer(new_key("random")[1]))
    assert (await anonymous.get(USER, headers=bearer(new_key("x")[1]))).status_code == 429
    keys_of(app).clock = lambda: 1e12  # its cached record is stale: it is read again
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await anonymous.get(USER, headers=bearer(wrong))).status_code == 429


@pytest.mark.anyio
async def test_a_key_made_after_a_miss_works_once_the_miss_is_forgotten(
    app: FastAPI, anonymous: httpx.AsyncClient
) -> None:
    clock = Clock()
    state_of(app).unknown_keys.clock = clock
    record, token = new_key("late", collections=["users"])
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 401
    await keys_of(app).create(record)
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 401
    clock.now += 60.0
    assert (await anonymous.get(USER, headers=bearer(token))).status_code == 200


# the gate


class FakeRedis(RespClient):
    """Answers the gated scripts as Redis would, with `wait`; records every command."""

    def __init__(self, wait: str, read: Any) -> None:
        super().__init__(Address())
        self.wait, self.read = wait, read
        self.sent: list[tuple[Any, ...]] = []

    async def call(self, *args: Arg) -> Any:
        self.sent.append(args)
        return self.read

    async def eval(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        self.sent.append((script, list(keys), list(args)))
        return [self.wait.encode()] if self.wait != "0" else [b"0", self.read]


def reads_with(wait: str, read: Any = b"view") -> tuple[GatedReads, FakeRedis]:
    redis = FakeRedis(wait, read)
    return GatedReads(redis, ApiKeyLayout("tf")), redis


async def gated_call(reads: GatedReads, charge: Charge | None) -> Any:
    token = PENDING.set(charge)
    try:
        return await reads.call("GET", "tf:v:user:u-1")
    finally:
        PENDING.reset(token)


@pytest.mark.anyio
async def test_an_allowed_charge_carries_the_read() -> None:
    reads, redis = reads_with("0")
    charge = Charge(MemoryKeyStore(), "k1", 2.0, 10)
    assert await gated_call(reads, charge) == b"view"
    assert charge.sent
    assert charge.wait == 0.0
    [(script, keys, args)] = redis.sent
    assert script == gated(GET)
    assert keys == ["tf:r:k1", "tf:v:user:u-1"]
    assert args[:2] == ["2.0", 10]
    assert await charge.settle() == 0.0  # settled: nothing more sent
    assert len(redis.sent) == 1


@pytest.mark.anyio
async def test_a_refused_charge_reads_nothing() -> None:
    reads, _ = reads_with("1.5")
    charge = Charge(MemoryKeyStore(), "k1", 2.0, 10)
    with pytest.raises(ApiError) as refused:
        await gated_call(reads, charge)
    assert refused.value.status == 429
    assert charge.wait == 1.5


@pytest.mark.anyio
async def test_without_a_pending_charge_reads_go_through_as_they_are() -> None:
    reads, redis = reads_with("0")
    assert await gated_call(reads, None) == b"view"
    charge = Charge(MemoryKeyStore(), "k1", 2.0, 10, sent=True)
    assert await gated_call(reads, charge) == b"view"
    assert redis.sent == [("GET", "tf:v:user:u-1")] * 2


@pytest.mark.anyio
async def test_a_charge_no_read_carried_is_sent_when_settled() -> None:
    keys = MemoryKeyStore(clock=Clock())
    charge = Charge(keys, "k1", 1.0, 1)
    assert await charge.settle() == 0.0
    assert await Charge(keys, "k1", 1.0, 1).settle() == 1.0


def test_a_gated_script_hands_the_read_its_own_keys_and_arguments() -> None:
    script = Script.of("return redis.call('GET', KEYS[1]) .. ARGV[1]")
    wrapped = gated(script).source
    assert gated(script) is gated(script)
    assert "local function take(" in wrapped
    assert "local function read(KEYS, ARGV)\n" + script.source + "\nend" in wrapped


def test_the_settings_and_their_bounds() -> None:
    settings = Settings.from_environ(
        {
            "TRAITFLOW_API_NEGATIVE_KEY_TTL_S": "0",
            "TRAITFLOW_API_AUTH_FAILURES_PER_S": "0.5",
            "TRAITFLOW_API_AUTH_FAILURES_BURST": "3",
            "TRAITFLOW_API_TRUSTED_PROXIES": "2",
        }
    )
    assert settings.api_negative_key_ttl_s == 0.0
    assert (settings.api_auth_failures_per_s, settings.api_auth_failures_burst) == (0.5, 3)
    assert settings.api_trusted_proxies == 2
    for name, value in (
        ("API_AUTH_FAILURES_PER_S", "0"),
        ("API_AUTH_FAILURES_BURST", "0"),
        ("API_NEGATIVE_KEY_TTL_S", "-1"),
        ("API_TRUSTED_PROXIES", "-1"),
    ):
        with pytest.raises(ValueError, match="greater than"):
            Settings.from_environ({f"TRAITFLOW_{name}": value})
