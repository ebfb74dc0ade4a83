"""Merge policies made through the API (`/config/mergePolicies`), end to end: a real
broker, a real Redis, a real worker and two real `traitflow api` processes.

The session's worker and API server have one source and the default policy only, so
this module starts its own, as `test_sources` does: two ingest topics bound to `web`
and `crm`, the configured policies `default` (timestamp_ordered) and `crm-first`. Two
API processes, A and B, share the module's Redis key prefix and settings; B trusts the
policies it read for `B_CACHE_S` only, A for the default `TRAITFLOW_API_POLICY_CACHE_S`.
A policy made through one process must then serve record and entity reads in both, be
kept in Redis under `{prefix}:mp`, and be gone from both once deleted.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis

from attributes.events import iso_from_ms
from attributes.policies import MergePolicy
from tests.integration.conftest import Publisher, create_key, user_id, wait_until
from tests.integration.sources_support import source_topics, two_source_worker
from tests.integration.workers import running_api
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon

pytestmark = pytest.mark.integration

T0 = 1_794_391_200_000  # 2026-11-11T10:00:00Z
MINUTE = 60_000
CONFIGURED = {
    "default": MergePolicy(),
    "crm-first": MergePolicy(kind="source_precedence", sources=["crm", "web"]),
}
#: the policy the tests make through the API
POLICY = "crm-first-api"
CRM_FIRST = {"kind": "source_precedence", "sources": ["crm", "web"]}
WEB_FIRST = {"kind": "source_precedence", "sources": ["web", "crm"]}
#: how long API process B trusts the policies it read
B_CACHE_S = 0.2
PATH = "/config/mergePolicies"
ATTRIBUTES_PROVENANCE = "computed from the events of every source"


def at(minute: int) -> str:
    return iso_from_ms(T0 + minute * MINUTE)


def record_path(index: str, value: str) -> str:
    return f"/v1/collections/users/records/{index}/{value}"


def api_policy(policy_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """How the API describes a policy made through it."""
    return {"id": policy_id, **body, "default": False, "origin": "api"}


def error_of(response: httpx.Response, status: int) -> str:
    """The message of a JSON `{"error": ...}` answer with `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str)
    assert message
    return message


@dataclass
class Apis:
    """Clients of the two API processes: with an admin key, and with a key that may
    read the `users` collection only (`reader_*`)."""

    a: httpx.Client
    b: httpx.Client
    reader_a: httpx.Client
    reader_b: httpx.Client
    url_a: str


@pytest.fixture(scope="module")
def own(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """API process A's settings, which the worker shares."""
    name = f"tfmp-{uuid.uuid4().hex[:8]}"
    return settings.isolated(
        name,
        sources={f"{name}-web": "web", f"{name}-crm": "crm"},
        source_trust={"web": "trusted", "crm": "trusted"},
        merge_policies=CONFIGURED,
        default_merge_policy="default",
        api_policy_cache_s=2.0,
        topic_partitions=2,
        home=tmp_path_factory.mktemp("merge-policies"),
    )


@pytest.fixture(scope="module")
def own_b(own: Settings) -> Settings:
    """API process B's: A's, but with a short policy cache."""
    b = own.model_copy(update={"api_policy_cache_s": B_CACHE_S})
    assert b.model_dump() == own.model_dump() | {"api_policy_cache_s": B_CACHE_S}
    return b


@pytest.fixture(scope="module")
def topics(own: Settings, redis_client: redis.Redis) -> Iterator[dict[str, Publisher]]:
    with source_topics(own, redis_client) as publishers:
        yield publishers


@pytest.fixture(scope="module")
def own_worker(
    own: Settings, topics: dict[str, Publisher], redis_client: redis.Redis
) -> Iterator[Daemon]:
    with two_source_worker(own, topics, redis_client, "mp-worker") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def apis(own: Settings, own_b: Settings, topics: dict[str, Publisher]) -> Iterator[Apis]:
    """Two real `traitflow api` processes on one Redis prefix, and their clients."""
    admin = create_key(own, "mp-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
    reader = create_key(
        own, "mp-reader", collections=["users"], rate_per_s=100_000.0, burst=100_000
    )
    with contextlib.ExitStack() as stack:
        url_a = stack.enter_context(running_api(own, "mp-api-a"))
        url_b = stack.enter_context(running_api(own_b, "mp-api-b"))

        def client(url: str, token: str) -> httpx.Client:
            headers = {"Authorization": f"Bearer {token}"}
            return stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=5.0))

        yield Apis(
            a=client(url_a, admin),
            b=client(url_b, admin),
            reader_a=client(url_a, reader),
            reader_b=client(url_b, reader),
            url_a=url_a,
        )


@pytest.fixture
def policy_id(apis: Apis) -> Iterator[str]:
    """`POLICY`, absent when the test starts and deleted (through A) when it ends."""
    assert apis.a.get(f"{PATH}/{POLICY}").status_code == 404
    yield POLICY
    assert apis.a.delete(f"{PATH}/{POLICY}").status_code in (204, 404)


def sourced_profile(topics: dict[str, Publisher], api: httpx.Client, user: str) -> Any:
    """crm says plan=pro and tier=gold at minute 1; web says plan=free and name=Ann later,
    at minute 5. The profile (default policy) once the API serves both events."""
    crm = {"plan": "pro", "tier": "gold"}
    topics["crm"](
        [
            {
                "type": "identify",
                "messageId": f"c-{user}",
                "timestamp": at(1),
                "userId": user,
                "traits": crm,
            }
        ]
    )
    web = {"plan": "free", "name": "Ann"}
    topics["web"](
        [
            {
                "type": "identify",
                "messageId": f"w-{user}",
                "timestamp": at(5),
                "userId": user,
                "anonymousId": f"a-{user}",
                "traits": web,
            }
        ]
    )

    def applied() -> Any:
        response = api.get(record_path("user_id", user))
        return response.status_code == 200 and response.json()["version"] == 2 and response.json()

    return wait_until(applied, what="both sources' events")


def traits_under(api: httpx.Client, user: str, policy: str) -> Any:
    """The record's traits read under `policy`, or None when the policy is unknown."""
    response = api.get(record_path("user_id", user), params={"merge_policy": policy})
    if response.status_code == 404:
        assert "merge policy" in error_of(response, 404)
        return None
    assert response.status_code == 200, response.text
    return response.json()["traits"]


def entity_traits(api: httpx.Client, user: str, policy: str) -> Any:
    params = {
        "schema.name": "_xdm.context.profile",
        "entityId": f"a-{user}",
        "entityIdNS": "anonymous_id",
        "mergePolicyId": policy,
    }
    response = api.get("/access/entities", params=params)
    assert response.status_code == 200, response.text
    return response.json()[user]["entity"]["traits"]


CRM_WINS = {"plan": "pro", "tier": "gold", "name": "Ann"}
WEB_WINS = {"plan": "free", "tier": "gold", "name": "Ann"}


# --- 1. an admin makes a policy on A; A's reads use it at once --------------------------------


def test_a_policy_made_through_the_api_serves_reads_with_provenance(
    own: Settings,
    topics: dict[str, Publisher],
    own_worker: Daemon,
    apis: Apis,
    redis_client: redis.Redis,
    policy_id: str,
) -> None:
    user = user_id()
    stored = sourced_profile(topics, apis.a, user)
    assert stored["traits"] == WEB_WINS  # timestamp_ordered: web's later plan
    assert "provenance" not in stored
    path = record_path("user_id", user)
    unknown = apis.a.get(path, params={"merge_policy": policy_id})
    assert error_of(unknown, 404) == (
        f"merge policy {policy_id!r} not found (known: crm-first, default)"
    )

    created = apis.a.post(PATH, json={"id": policy_id, **CRM_FIRST})
    assert created.status_code == 201, created.text
    assert created.json() == api_policy(policy_id, CRM_FIRST)

    # kept in Redis, in the module's prefix: one hash field per policy
    hash_key = f"{own.key_prefix}:mp"
    assert KeyLayout(own.key_prefix).merge_policies() == hash_key
    assert redis_client.type(hash_key) == b"hash"
    assert redis_client.hkeys(hash_key) == [policy_id.encode()]
    raw = redis_client.hget(hash_key, policy_id)
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == CRM_FIRST

    # read under it on A at once (A's own change needs no cache expiry)
    response = apis.a.get(path, params={"merge_policy": policy_id, "provenance": "true"})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document.pop("provenance") == {
        "policy": policy_id,
        "traits": {
            "plan": {"source": "crm", "timestamp": at(1)},
            "tier": {"source": "crm", "timestamp": at(1)},
            "name": {"source": "web", "timestamp": at(5)},
        },
        "attributes": ATTRIBUTES_PROVENANCE,
    }
    assert document == stored | {"traits": CRM_WINS}
    assert traits_under(apis.a, user, policy_id) == CRM_WINS
    assert traits_under(apis.reader_a, user, policy_id) == CRM_WINS  # any valid key reads
    assert entity_traits(apis.a, user, policy_id) == CRM_WINS

    # the default read is still the stored, timestamp-ordered view
    plain = apis.a.get(path)
    assert plain.status_code == 200
    assert plain.json() == stored
    default = apis.a.get(path, params={"provenance": "true"}).json()
    assert default["traits"] == WEB_WINS
    assert default["provenance"]["policy"] == "default"
    assert default["provenance"]["traits"]["plan"] == {"source": "web", "timestamp": at(5)}
    assert entity_traits(apis.a, user, "default") == WEB_WINS

    # listed and readable, beside the configured ones
    listed = apis.reader_a.get(PATH)
    assert listed.status_code == 200
    assert listed.json() == {
        "_page": {"totalCount": 3},
        "children": [
            {"id": "default", "kind": "timestamp_ordered", "sources": [], "default": True}
            | {"origin": "config"},
            {"id": "crm-first", **CRM_FIRST, "default": False, "origin": "config"},
            api_policy(policy_id, CRM_FIRST),
        ],
    }
    one = apis.reader_a.get(f"{PATH}/{policy_id}")
    assert one.status_code == 200
    assert one.json() == api_policy(policy_id, CRM_FIRST)

    # deleted: gone from Redis and from A's reads at once
    deleted = apis.a.delete(f"{PATH}/{policy_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert not redis_client.hexists(hash_key, policy_id)
    assert traits_under(apis.a, user, policy_id) is None
    error_of(apis.a.get(f"{PATH}/{policy_id}"), 404)


# --- 2. the other API process: within its cache time ------------------------------------------


def test_another_api_process_sees_changes_within_its_cache_time(
    own: Settings,
    own_b: Settings,
    topics: dict[str, Publisher],
    own_worker: Daemon,
    apis: Apis,
    redis_client: redis.Redis,
    policy_id: str,
) -> None:
    user = user_id()
    sourced_profile(topics, apis.a, user)
    # B may hold what it read before this test for B_CACHE_S: wait until it forgets
    wait_until(lambda: traits_under(apis.b, user, policy_id) is None, what="B without the policy")

    created = apis.a.post(PATH, json={"id": policy_id, **CRM_FIRST})
    assert created.status_code == 201, created.text
    made_at = time.monotonic()
    served = wait_until(
        lambda: traits_under(apis.b, user, policy_id), timeout=10, what="B to serve the policy"
    )
    assert served == CRM_WINS
    # well within A's own cache time: B's shorter cache is what it follows
    assert time.monotonic() - made_at < own.api_policy_cache_s
    assert traits_under(apis.reader_b, user, policy_id) == CRM_WINS
    assert entity_traits(apis.b, user, policy_id) == CRM_WINS
    provenance = apis.b.get(
        record_path("anonymous_id", f"a-{user}"),
        params={"merge_policy": policy_id, "provenance": "true"},
    ).json()["provenance"]
    assert provenance["policy"] == policy_id
    assert provenance["traits"]["plan"] == {"source": "crm", "timestamp": at(1)}
    one = apis.b.get(f"{PATH}/{policy_id}")
    assert one.status_code == 200
    assert one.json() == api_policy(policy_id, CRM_FIRST)
    listed = apis.b.get(PATH).json()
    assert listed["_page"] == {"totalCount": 3}
    assert [(c["id"], c["origin"]) for c in listed["children"]] == [
        ("default", "config"),
        ("crm-first", "config"),
        (policy_id, "api"),
    ]

    # replaced on A: 200, A at once, B within its cache time
    replaced = apis.a.put(f"{PATH}/{policy_id}", json=WEB_FIRST)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json() == api_policy(policy_id, WEB_FIRST)
    assert traits_under(apis.a, user, policy_id) == WEB_WINS
    replaced_at = time.monotonic()
    wait_until(
        lambda: traits_under(apis.b, user, policy_id) == WEB_WINS,
        timeout=10,
        what="B to serve the replaced policy",
    )
    assert time.monotonic() - replaced_at < own.api_policy_cache_s
    stored = redis_client.hget(f"{own.key_prefix}:mp", policy_id)
    assert isinstance(stored, bytes)
    assert orjson.loads(stored) == WEB_FIRST

    # deleted on A: A answers 404 at once, B within its cache time
    deleted = apis.a.delete(f"{PATH}/{policy_id}")
    assert deleted.status_code == 204
    error_of(apis.a.get(f"{PATH}/{policy_id}"), 404)
    assert traits_under(apis.a, user, policy_id) is None
    deleted_at = time.monotonic()

    def b_forgot() -> bool:
        return apis.b.get(f"{PATH}/{policy_id}").status_code == 404

    wait_until(b_forgot, timeout=10, what="B to forget the deleted policy")
    assert time.monotonic() - deleted_at < own.api_policy_cache_s
    message = error_of(apis.b.get(f"{PATH}/{policy_id}"), 404)
    assert message == f"merge policy {policy_id!r} not found"
    unknown = apis.b.get(record_path("user_id", user), params={"merge_policy": policy_id})
    assert error_of(unknown, 404) == (
        f"merge policy {policy_id!r} not found (known: crm-first, default)"
    )
    entities = apis.b.get(
        "/access/entities",
        params={
            "schema.name": "_xdm.context.profile",
            "entityId": user,
            "mergePolicyId": policy_id,
        },
    )
    error_of(entities, 404)
    assert apis.b.get(PATH).json()["_page"] == {"totalCount": 2}


def test_a_policy_put_on_b_reaches_a_within_a_cache_time(
    own: Settings,
    topics: dict[str, Publisher],
    own_worker: Daemon,
    apis: Apis,
    policy_id: str,
) -> None:
    user = user_id()
    sourced_profile(topics, apis.a, user)
    assert traits_under(apis.a, user, policy_id) is None  # A now caches "no such policy"
    created = apis.b.put(f"{PATH}/{policy_id}", json=CRM_FIRST)
    assert created.status_code == 201, created.text
    assert created.json() == api_policy(policy_id, CRM_FIRST)
    assert traits_under(apis.b, user, policy_id) == CRM_WINS  # at once where it was made
    wait_until(
        lambda: traits_under(apis.a, user, policy_id) == CRM_WINS,
        timeout=own.api_policy_cache_s + 3,
        what="A to serve the policy B made",
    )


# --- 3. what the API refuses ------------------------------------------------------------------


def test_refused_changes_are_json_errors_and_leave_redis_alone(
    own: Settings, apis: Apis, redis_client: redis.Redis, policy_id: str
) -> None:
    hash_key = f"{own.key_prefix}:mp"
    # reads: any valid key; no key: 401
    assert apis.reader_a.get(PATH).status_code == 200
    assert apis.reader_b.get(f"{PATH}/crm-first").json()["origin"] == "config"
    with httpx.Client(base_url=apis.url_a) as anonymous:
        error_of(anonymous.get(PATH), 401)
        error_of(anonymous.post(PATH, json={"id": policy_id, **CRM_FIRST}), 401)

    # changes: admin keys only
    for response in (
        apis.reader_a.post(PATH, json={"id": policy_id, **CRM_FIRST}),
        apis.reader_a.put(f"{PATH}/{policy_id}", json=CRM_FIRST),
        apis.reader_b.delete(f"{PATH}/{policy_id}"),
        apis.reader_a.delete(f"{PATH}/crm-first"),
    ):
        assert error_of(response, 403) == "changing merge policies needs an admin key"

    # a source no ingest topic is bound to
    unbound = {"kind": "source_precedence", "sources": ["crm", "mobile"]}
    for response in (
        apis.a.post(PATH, json={"id": policy_id, **unbound}),
        apis.b.put(f"{PATH}/{policy_id}", json=unbound),
    ):
        message = error_of(response, 400)
        assert "'mobile'" in message
        assert "crm, web" in message  # and which sources there are

    # configured policies are read-only here
    for response in (
        apis.a.post(PATH, json={"id": "crm-first", **WEB_FIRST}),
        apis.a.put(f"{PATH}/crm-first", json=WEB_FIRST),
        apis.b.delete(f"{PATH}/crm-first"),
        apis.a.delete(f"{PATH}/default"),
    ):
        assert "TRAITFLOW_MERGE_POLICIES" in error_of(response, 409)
    assert apis.a.get(f"{PATH}/crm-first").json() == {
        "id": "crm-first",
        **CRM_FIRST,
        "default": False,
        "origin": "config",
    }

    # unknown ids
    assert error_of(apis.a.delete(f"{PATH}/{policy_id}"), 404) == (
        f"merge policy {policy_id!r} not found"
    )
    error_of(apis.b.get(f"{PATH}/{policy_id}"), 404)

    # malformed bodies and ids: 400, never 422
    for response in (
        apis.a.post(PATH, json={"id": "bad id!", **CRM_FIRST}),
        apis.a.post(PATH, json=CRM_FIRST),  # no id
        apis.a.post(PATH, json={"id": policy_id, "kind": "source_precedence"}),  # no sources
        apis.a.post(PATH, json={"id": policy_id, "kind": "timestamp_ordered", "sources": ["crm"]}),
        apis.a.post(PATH, json={"id": policy_id, "kind": "newest"}),
        apis.a.post(
            PATH,
            json={"id": policy_id, "kind": "source_precedence", "sources": ["crm"]} | {"extra": 1},
        ),
        apis.a.post(
            PATH, json={"id": policy_id, "sources": ["crm", "crm"], "kind": "source_precedence"}
        ),
        apis.a.put(f"{PATH}/{'x' * 65}", json=CRM_FIRST),
        apis.a.post(PATH, content=b"not json", headers={"content-type": "application/json"}),
    ):
        error_of(response, 400)
    assert not redis_client.exists(hash_key)  # nothing refused was stored

    # a second create of the same id
    assert apis.a.post(PATH, json={"id": policy_id, **CRM_FIRST}).status_code == 201
    assert "exists" in error_of(apis.b.post(PATH, json={"id": policy_id, **WEB_FIRST}), 409)
    raw = redis_client.hget(hash_key, policy_id)
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == CRM_FIRST  # the refused create changed nothing
    assert not redis_client.hexists(hash_key, "crm-first")


# --- a change racing a read of the policies, in the process that made it ----------------------

#: enough stored policies that reading them all is a reply of ~1 MB, long enough in
#: flight for a change to be made meanwhile
FILLERS = 20_000


def expect(condition: bool, message: str) -> None:
    """A precondition of the test below, said apart from what it checks."""
    if not condition:
        pytest.fail(message)


def test_the_process_that_made_a_change_serves_it_at_once_even_during_a_read(
    settings: Settings, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A third API process, C, on a key prefix of its own (the fillers stay out of A's
    and B's way), with a long policy cache: only its own changes may reach it at once.

    C is sent a read that loads every stored policy and, while that load is in flight, a
    create; once both answered, C is asked for the new policy."""
    name = f"tfmprace-{uuid.uuid4().hex[:8]}"
    own_c = settings.isolated(
        name,
        sources={f"{name}-web": "web", f"{name}-crm": "crm"},
        source_trust={"web": "trusted", "crm": "trusted"},
        merge_policies=CONFIGURED,
        api_policy_cache_s=30.0,
        home=tmp_path_factory.mktemp("merge-policies-race"),
    )
    layout = KeyLayout(own_c.key_prefix)
    filler = orjson.dumps(WEB_FIRST)
    redis_client.hset(
        layout.merge_policies(), mapping={f"filler-{i:05d}": filler for i in range(FILLERS)}
    )
    token = create_key(own_c, "mp-race-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with (
            running_api(own_c, "mp-api-c") as url,
            httpx.Client(base_url=url, headers=headers, timeout=30.0) as writer,
            httpx.Client(base_url=url, headers=headers, timeout=30.0) as reader,
        ):
            # without a concurrent read, C serves its own change at once
            expect(writer.get(f"{PATH}/filler-00000").status_code == 200, "a filler")
            expect(writer.post(PATH, json={"id": "alone", **CRM_FIRST}).status_code == 201, "")
            expect(writer.get(f"{PATH}/alone").status_code == 200, "C serves 'alone' at once")

            read_statuses: list[int] = []

            def read_the_policies() -> None:
                # an unknown policy: C loads the stored ones (its cache was dropped)
                path = record_path("user_id", "nobody")
                read_statuses.append(reader.get(path, params={"merge_policy": "x"}).status_code)

            for attempt in range(20):
                # a change through C drops C's cache, so the next read loads the policies
                scratch = writer.put(f"{PATH}/scratch", json=WEB_FIRST)
                expect(scratch.status_code in (200, 201), f"scratch: {scratch.text}")
                reading = threading.Thread(target=read_the_policies)
                reading.start()
                time.sleep(attempt % 3 * 0.002)  # the write at varied points of the load
                policy = f"made-{attempt}"
                created = writer.post(PATH, json={"id": policy, **CRM_FIRST})
                reading.join()
                expect(created.status_code == 201, f"{policy}: {created.text}")
                expect(read_statuses[-1:] == [404], f"the concurrent read: {read_statuses}")
                expect(bool(redis_client.hexists(layout.merge_policies(), policy)), policy)
                served = writer.get(f"{PATH}/{policy}")
                assert served.status_code == 200, (
                    f"attempt {attempt}: C made {policy!r} (201, stored in Redis), then "
                    f"answered {served.status_code} {served.text}"
                )
    finally:
        for key in redis_client.scan_iter(layout.all_keys(), count=10_000):
            redis_client.unlink(key)
