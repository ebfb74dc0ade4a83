"""Abuse cannot reach Redis (issue 17, point 6), counted by Redis itself: a real
`traitflow api` process on a redis-server of the test's own, whose `INFO
commandstats` (reset before each part) says what each kind of request cost.

- a key past its rate limit: one script per request (the charge), no profile read;
- an unknown key id repeated: one lookup, then none (remembered as unknown);
- random key ids from an address that failed too often: 429s that cost nothing;
- a key made after its id was remembered as unknown works once that is forgotten;
- Treasure Data's route (`Authorization: TD1 ...`) alike: a throttled call costs its
  charge and no profile read, an unknown key one lookup, random keys from an address
  past its failures nothing.

The API trusts one proxy (`TRAITFLOW_API_TRUSTED_PROXIES=1`), so each part sends its
own X-Forwarded-For address and has a failure bucket of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from api.keys import RedisKeyStore, new_key
from attributes.offers import CONTENT_TYPE
from tests.integration.conftest import create_key
from tests.integration.workers import own_service, running_api
from traitflow.config import Settings
from traitflow.services import Service, free_port

pytestmark = pytest.mark.integration

MISSING = "/v1/collections/users/records/id/nobody"
BY_INDEX = "/v1/collections/users/records/user_id/nobody"
NEGATIVE_TTL_S = 2.0
FAILURE_BURST = 5


@dataclass
class Abused:
    base: str
    settings: Settings
    redis: redis.Redis

    def calls(self) -> dict[str, int]:
        """Commands Redis ran since the last `reset`, by name (scripts' own included),
        without the INFO that asks."""
        stats = self.redis.info("commandstats")
        counted = {
            name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()
        }
        counted.pop("info", None)
        counted.pop("config|resetstat", None)
        return {name: calls for name, calls in counted.items() if calls}

    def reset(self) -> None:
        self.redis.config_resetstat()

    def refusals(self) -> dict[str, float]:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        found = re.findall(r'^traitflow_api_refusals_total\{reason="(\w+)"\} (\S+)$', text, re.M)
        return {reason: float(value) for reason, value in found}


@pytest.fixture(scope="module")
def abused(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Abused]:
    directory = tmp_path_factory.mktemp("api-abuse")
    with own_service(Service("redis", directory, "127.0.0.1", free_port())) as service:
        url = f"redis://127.0.0.1:{service.port}/0"
        own = settings.isolated(
            f"tfabuse-{uuid.uuid4().hex[:8]}",
            redis_url=url,
            api_key_cache_s=60.0,  # no record re-read inside a part
            api_negative_key_ttl_s=NEGATIVE_TTL_S,
            api_auth_failures_per_s=0.01,  # no failure earned back inside a part
            api_auth_failures_burst=FAILURE_BURST,
            api_trusted_proxies=1,
            source_jobs_in_api=False,  # no background job polls Redis
            export_in_api=False,
        )
        client = redis.Redis.from_url(url)
        try:
            with running_api(own, "abuse-api") as base:
                yield Abused(base, own, client)
        finally:
            client.close()


def from_address(token: str, address: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Forwarded-For": f"203.0.113.9, {address}"}


def random_token() -> str:
    return new_key("never stored")[1]


async def send(base: str, path: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    """`count` requests, 16 at a time (as a client under load would)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answers: list[httpx.Response] = []
        for start in range(0, count, 16):
            batch = [client.get(path, headers=headers) for _ in range(min(16, count - start))]
            answers.extend(await asyncio.gather(*batch))
        return answers


def test_a_throttled_key_costs_its_charge_and_no_read(abused: Abused) -> None:
    token = create_key(
        abused.settings, "throttled", collections=["users"], rate_per_s=0.001, burst=6
    )
    headers = from_address(token, "198.51.100.1")
    # the first requests read the key's record and load the scripts into Redis
    warm = [httpx.get(f"{abused.base}{path}", headers=headers) for path in (MISSING, BY_INDEX)]
    assert [r.status_code for r in warm] == [404, 404]
    for path in (MISSING, BY_INDEX):
        # the allowed requests: one script each, which charged and read
        abused.reset()
        allowed = asyncio.run(send(abused.base, path, headers, 2))
        assert [r.status_code for r in allowed] == [404, 404]
        calls = abused.calls()
        assert calls.pop("evalsha") == 2, calls
        assert calls.pop("get") == 2, calls  # the view (or index key), inside the script
        assert set(calls) == {"time", "hmget", "hset", "pexpire"}, calls

    before = abused.refusals().get("key_rate_limit", 0.0)
    for path in (MISSING, BY_INDEX):
        abused.reset()
        refused = asyncio.run(send(abused.base, path, headers, 100))
        assert {r.status_code for r in refused} == {429}
        assert int(refused[0].headers["retry-after"]) >= 1
        assert refused[0].json() == {"error": "rate limit exceeded for this API key"}
        calls = abused.calls()
        # one command per request: the charge; nothing read (the record is cached)
        assert calls.pop("evalsha") == 100, calls
        assert "get" not in calls, calls
        assert set(calls) == {"time", "hmget", "hset", "pexpire"}, calls
    assert abused.refusals()["key_rate_limit"] == before + 200


def test_an_unknown_key_costs_one_lookup(abused: Abused) -> None:
    token = random_token()
    abused.reset()
    answers = asyncio.run(send(abused.base, MISSING, from_address(token, "198.51.100.2"), 1))
    answers += asyncio.run(send(abused.base, MISSING, from_address(token, "198.51.100.2"), 3))
    assert [r.status_code for r in answers] == [401] * 4
    assert abused.calls() == {"get": 1}
    assert abused.refusals()["unknown_key_cached"] >= 3


def test_random_tokens_from_an_address_that_failed_too_often_cost_nothing(
    abused: Abused,
) -> None:
    address = "198.51.100.3"
    abused.reset()
    first = [
        httpx.get(f"{abused.base}{MISSING}", headers=from_address(random_token(), address))
        for _ in range(FAILURE_BURST)
    ]
    assert [r.status_code for r in first] == [401] * FAILURE_BURST
    assert abused.calls() == {"get": FAILURE_BURST}  # one lookup each, then:

    before = abused.refusals().get("auth_failures", 0.0)
    abused.reset()
    throttled = [
        httpx.get(f"{abused.base}{MISSING}", headers=from_address(random_token(), address))
        for _ in range(50)
    ]
    assert {r.status_code for r in throttled} == {429}
    assert throttled[0].json() == {"error": "too many failed authentications from this address"}
    assert throttled[0].headers["content-type"] == "application/json"
    assert int(throttled[0].headers["retry-after"]) >= 1
    assert abused.calls() == {}
    assert abused.refusals()["auth_failures"] == before + 50

    # another address still fails in its own right; the client addresses are what the
    # proxy wrote, not what the client put before them
    other = httpx.get(
        f"{abused.base}{MISSING}", headers=from_address(random_token(), "198.51.100.4")
    )
    assert other.status_code == 401
    spoofed = httpx.get(
        f"{abused.base}{MISSING}",
        headers={
            "Authorization": f"Bearer {random_token()}",
            "X-Forwarded-For": f"198.51.100.5, {address}",
        },
    )
    assert spoofed.status_code == 429

    # a key this process has read still works from the throttled address
    token = create_key(abused.settings, "behind the same address", collections=["users"])
    assert (
        httpx.get(
            f"{abused.base}{MISSING}", headers=from_address(token, "198.51.100.6")
        ).status_code
        == 404
    )
    assert (
        httpx.get(f"{abused.base}{MISSING}", headers=from_address(token, address)).status_code
        == 404
    )


def test_a_key_made_after_its_id_was_remembered_unknown_works_after_the_ttl(
    abused: Abused,
) -> None:
    record, token = new_key("late", collections=["users"])
    headers = from_address(token, "198.51.100.7")
    assert httpx.get(f"{abused.base}{MISSING}", headers=headers).status_code == 401
    missed = time.monotonic()

    async def store() -> None:
        keys = RedisKeyStore.from_url(abused.settings.redis_url, abused.settings.key_prefix)
        try:
            await keys.create(record)
        finally:
            await keys.close()

    asyncio.run(store())
    abused.reset()
    assert httpx.get(f"{abused.base}{MISSING}", headers=headers).status_code == 401
    assert "get" not in abused.calls()  # remembered: not looked up again
    while time.monotonic() - missed < NEGATIVE_TTL_S:
        time.sleep(0.1)
    assert httpx.get(f"{abused.base}{MISSING}", headers=headers).status_code == 404


# Treasure Data's route: the same keys in its own header (`api.td`), the same limits


@dataclass
class Personalization:
    path: str
    token: str


@pytest.fixture(scope="module")
def personalization(abused: Abused) -> Personalization:
    """A service made through the admin API, which answers at once (no read-your-write
    wait: no worker runs here)."""
    admin = {"Authorization": f"Bearer {create_key(abused.settings, 'td-admin', admin=True)}"}
    made = httpx.put(
        f"{abused.base}/v1/personalization/services/abuse",
        json={"account_id": "42", "database": "p13n_db", "table": "abuse", "wait_ms": 0},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    token = httpx.post(
        f"{abused.base}/v1/personalization/services/abuse/tokens",
        json={"instance_id": "site"},
        headers=admin,
    ).json()["token"]
    return Personalization("/p13n_db/abuse", token)


def td_from(p13n: Personalization, key: str, address: str) -> dict[str, str]:
    return {
        "Content-Type": CONTENT_TYPE,
        "Authorization": f"TD1 42/{key}",
        "WP13n-Token": p13n.token,
        "X-Forwarded-For": f"203.0.113.9, {address}",
    }


async def send_td(
    base: str, p13n: Personalization, headers: dict[str, str], count: int
) -> list[httpx.Response]:
    """`count` calls, 16 at a time."""
    body = {"email": "nobody@example.com"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answers: list[httpx.Response] = []
        for start in range(0, count, 16):
            batch = [
                client.post(p13n.path, json=body, headers=headers)
                for _ in range(min(16, count - start))
            ]
            answers.extend(await asyncio.gather(*batch))
        return answers


def test_a_throttled_td_call_costs_its_charge_and_reads_nothing(
    abused: Abused, personalization: Personalization
) -> None:
    key = create_key(
        abused.settings, "td-throttled", collections=["users"], rate_per_s=0.001, burst=3
    )
    headers = td_from(personalization, key, "198.51.100.11")
    # the first call reads the key's record and loads the scripts into Redis
    [warm] = asyncio.run(send_td(abused.base, personalization, headers, 1))
    assert warm.status_code == 200, warm.text
    abused.reset()
    allowed = asyncio.run(send_td(abused.base, personalization, headers, 2))
    assert [r.status_code for r in allowed] == [200, 200]
    assert abused.calls().get("evalsha", 0) >= 2  # the charges, then the profile reads

    before = abused.refusals().get("key_rate_limit", 0.0)
    abused.reset()
    refused = asyncio.run(send_td(abused.base, personalization, headers, 100))
    assert {r.status_code for r in refused} == {429}
    assert refused[0].json() == {"error": "rate limit exceeded for this API key"}
    assert int(refused[0].headers["retry-after"]) >= 1
    calls = abused.calls()
    # one command per call: the charge; no profile read, no key or service lookup
    assert calls.pop("evalsha") == 100, calls
    assert set(calls) == {"time", "hmget", "hset", "pexpire"}, calls
    assert abused.refusals()["key_rate_limit"] == before + 100


def test_an_unknown_td_key_costs_one_lookup(
    abused: Abused, personalization: Personalization
) -> None:
    headers = td_from(personalization, random_token(), "198.51.100.12")
    abused.reset()
    answers = asyncio.run(send_td(abused.base, personalization, headers, 1))
    answers += asyncio.run(send_td(abused.base, personalization, headers, 3))
    assert [r.status_code for r in answers] == [401] * 4
    assert answers[0].json() == {"error": "invalid API key"}
    assert abused.calls() == {"get": 1}


def test_random_td_keys_from_an_address_that_failed_too_often_cost_nothing(
    abused: Abused, personalization: Personalization
) -> None:
    address = "198.51.100.13"

    def attempt() -> httpx.Response:
        return httpx.post(
            f"{abused.base}{personalization.path}",
            json={"email": "nobody@example.com"},
            headers=td_from(personalization, random_token(), address),
        )

    abused.reset()
    first = [attempt() for _ in range(FAILURE_BURST)]
    assert [r.status_code for r in first] == [401] * FAILURE_BURST
    assert abused.calls() == {"get": FAILURE_BURST}
    abused.reset()
    throttled = [attempt() for _ in range(50)]
    assert {r.status_code for r in throttled} == {429}
    assert throttled[0].json() == {"error": "too many failed authentications from this address"}
    assert int(throttled[0].headers["retry-after"]) >= 1
    assert abused.calls() == {}
