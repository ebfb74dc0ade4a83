"""Redis failing in any way, behind any of the API's stores (profiles, key records, the
rate-limit charge, merge policies), is a JSON 503 with Retry-After on every route that
meets it: nothing of Redis in the body, the detail logged once per request, the kind
counted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
import redis.exceptions
from fastapi import FastAPI
from redis._parsers import BaseParser

from api.app import create_app
from api.errors import UNAVAILABLE, store_address, store_error_kind
from api.keys import ApiKey, MemoryKeyStore
from api.policy_store import MemoryPolicyStore
from api.state import state_of
from attributes.policies import MergePolicy
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.resp import RespConnectionError, RespError, RespTimeoutError

pytestmark = pytest.mark.anyio

HOST, PORT, PASSWORD = "10.1.2.3", "6390", "s3cret-pw"
SETTINGS = Settings(redis_url=f"redis://:{PASSWORD}@{HOST}:{PORT}/0")
ADDRESS = f"{HOST}:{PORT}"

#: how redis-py turns an error reply into the exception it raises (untyped there)
redis_py_error = cast("Callable[[str], redis.exceptions.RedisError]", BaseParser.parse_error)
OOM_TEXT = "command not allowed when used memory > 'maxmemory'."
REFUSED = f"Connect call failed ('{HOST}', {PORT})"

#: (a failure as the API's clients raise it, the kind it is counted as)
FAILURES: list[tuple[BaseException, str]] = [
    (RespError("LOADING Redis is loading the dataset in memory"), "LOADING"),
    (RespError("READONLY You can't write against a read only replica."), "READONLY"),
    (RespError(f"OOM {OOM_TEXT}"), "OOM"),
    (RespError(f"MOVED 3999 {ADDRESS}"), "MOVED"),
    (RespError("ERR Error running script (call to f_0a1b): @user_script:3: boom"), "ERR"),
    # redis-py's own, for the same replies: as it raises them (the code in `status_code`)...
    (redis_py_error("READONLY You can't write against a read only replica."), "READONLY"),
    (redis_py_error("LOADING Redis is loading the dataset in memory"), "LOADING"),
    # ... and as older redis-py raised them (the code stripped, known by the class only)
    (redis.exceptions.OutOfMemoryError(OOM_TEXT), "OOM"),
    (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING"),
    (redis.exceptions.MovedError(f"3999 {ADDRESS}"), "MOVED"),
    (RespConnectionError(f"cannot connect to Redis: {REFUSED}"), "connection"),
    (redis.exceptions.ConnectionError(f"Error 111 connecting to {ADDRESS}."), "connection"),
    (RespTimeoutError("Redis did not answer within 5 s"), "timeout"),
    (redis.exceptions.TimeoutError(f"Timeout reading from {ADDRESS}"), "timeout"),
    (TimeoutError(), "timeout"),
]
IDS = [
    f"{type(failure).__module__.split('.')[0]}.{type(failure).__name__}-{kind}"
    for failure, kind in FAILURES
]

#: a merge policy kept in the policy store (not configured): reads naming it read the store
MADE = "made"
RECORD = "/v1/collections/users/records/user_id/u-1"
ENTITIES = "/access/entities?schema.name=_xdm.context.profile&entityId=u-1&entityIdNS=user_id"
POLICIES = "/config/mergePolicies"
Request = tuple[str, str, dict[str, Any] | None]

#: every route that reads profiles
PROFILE_READS: list[Request] = [
    ("GET", "/v1/collections/users/records/id/u-1", None),
    ("GET", RECORD, None),
    ("GET", RECORD + "?provenance=true", None),
    ("POST", "/v1/collections/users/records/batch", {"lookups": [{"index": "id", "value": "u"}]}),
    (
        "POST",
        "/v2/activation",
        {
            "entity": "user",
            "destinationId": "web-personalisation",
            "id": {"type": "user_id", "value": "u-1"},
        },
    ),
    ("GET", ENTITIES, None),
    (
        "POST",
        "/access/entities",
        {
            "schema": {"name": "_xdm.context.profile"},
            "identities": [{"entityId": "u-1", "entityIdNS": {"code": "user_id"}}],
        },
    ),
]
#: every route that reads or writes the merge policies made through the API
POLICY_ROUTES: list[Request] = [
    ("GET", f"{RECORD}?merge_policy={MADE}", None),
    ("GET", f"{ENTITIES}&mergePolicyId={MADE}", None),
    ("GET", POLICIES, None),
    ("GET", f"{POLICIES}/{MADE}", None),
    ("POST", POLICIES, {"id": "another", "kind": "timestamp_ordered"}),
    ("PUT", f"{POLICIES}/{MADE}", {"kind": "timestamp_ordered"}),
    ("DELETE", f"{POLICIES}/{MADE}", None),
]
#: every route that wants a key: all of the above
KEYED_ROUTES = PROFILE_READS + POLICY_ROUTES


class FailingProfileStore(MemoryProfileStore):
    def __init__(self, failure: BaseException) -> None:
        super().__init__()
        self.failure = failure

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        raise self.failure

    async def read_views(self, entity: str, lookups: Sequence[tuple[str, str]]) -> Any:
        raise self.failure

    async def read_profiles(self, entity: str, lookups: Sequence[tuple[str, str]]) -> Any:
        raise self.failure


class FailingKeyStore(MemoryKeyStore):
    """Key records (`get`) or the rate-limit charge (`take`) fail; `cache_ttl_s=0`: each
    request reads its key's record, as one whose cached record expired does."""

    def __init__(self, failure: BaseException, failing: str) -> None:
        super().__init__(cache_ttl_s=0.0)
        self.failure, self.failing = failure, failing

    async def get(self, key_id: str) -> ApiKey | None:
        if self.failing == "get":
            raise self.failure
        return await super().get(key_id)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        if self.failing == "take":
            raise self.failure
        return await super().take(key_id, rate_per_s, burst)


class FailingPolicyStore(MemoryPolicyStore):
    def __init__(self, failure: BaseException) -> None:
        super().__init__(cache_ttl_s=0.0)
        self.failure = failure

    async def _load(self) -> dict[str, MergePolicy]:
        raise self.failure

    async def _create(self, policy_id: str, policy: MergePolicy) -> bool:
        raise self.failure

    async def _replace(self, policy_id: str, policy: MergePolicy) -> bool:
        raise self.failure

    async def _remove(self, policy_id: str) -> bool:
        raise self.failure


async def assert_every_request_is_a_bare_503(
    app: FastAPI,
    requests: list[Request],
    failure: BaseException,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each request: 503, JSON, Retry-After, the fixed message only; one WARNING each in
    the log with what failed and where (never the password); counted by kind."""
    caplog.set_level(logging.WARNING, logger="api.errors")
    async with serve(app) as client:  # which stores an admin key: only reads fail
        caplog.clear()
        for method, path, body in requests:
            response = await client.request(method, path, json=body)
            where = (method, path)
            assert response.status_code == 503, (where, response.text)
            assert response.headers["content-type"] == "application/json", where
            assert response.headers["retry-after"] == "1", where
            assert response.json() == {"error": UNAVAILABLE}, where
            for secret in (HOST, PORT, PASSWORD, str(failure) or "<none>", kind):
                assert secret not in response.text, (where, secret)
        sample = state_of(app).metrics.registry.get_sample_value
        assert sample("traitflow_api_redis_errors_total", {"kind": kind}) == len(requests)
    logged = [r for r in caplog.records if r.name == "api.errors"]
    assert [r.levelno for r in logged] == [logging.WARNING] * len(requests)
    for record, (method, path, _) in zip(logged, requests, strict=True):
        message = record.getMessage()
        assert message.startswith(f"{method} {path.split('?')[0]}: 503"), message
        assert ADDRESS in message, message
        assert f"({kind})" in message, message
        assert repr(failure) in message, message
        assert PASSWORD not in message


@pytest.mark.parametrize(("failure", "kind"), FAILURES, ids=IDS)
async def test_profile_reads_are_a_503_when_redis_fails(
    failure: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(SETTINGS, store=FailingProfileStore(failure), keys=MemoryKeyStore())
    await assert_every_request_is_a_bare_503(app, PROFILE_READS, failure, kind, caplog)


@pytest.mark.parametrize("failing", ["get", "take"], ids=["key-record", "rate-limit-charge"])
@pytest.mark.parametrize(("failure", "kind"), FAILURES, ids=IDS)
async def test_every_keyed_route_is_a_503_when_the_key_check_meets_a_failing_redis(
    failure: BaseException, kind: str, failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Never a 401 for a key Redis could not be asked about, nor a 500."""
    policies = MemoryPolicyStore()
    await policies.create(MADE, MergePolicy())
    keys = FailingKeyStore(failure, failing)
    app = create_app(SETTINGS, store=MemoryProfileStore(), keys=keys, policies=policies)
    await assert_every_request_is_a_bare_503(app, KEYED_ROUTES, failure, kind, caplog)


@pytest.mark.parametrize(("failure", "kind"), FAILURES, ids=IDS)
async def test_merge_policy_routes_are_a_503_when_redis_fails(
    failure: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(
        SETTINGS,
        store=MemoryProfileStore(),
        keys=MemoryKeyStore(),
        policies=FailingPolicyStore(failure),
    )
    await assert_every_request_is_a_bare_503(app, POLICY_ROUTES, failure, kind, caplog)


async def test_the_same_routes_answer_when_redis_does() -> None:
    """The failing stores above fail only where told to: the same requests, with the
    stores answering, are not 503s (so each 503 above is the failure's)."""
    policies = MemoryPolicyStore()
    await policies.create(MADE, MergePolicy())
    keys = FailingKeyStore(RuntimeError("never raised"), failing="neither")
    app = create_app(SETTINGS, store=MemoryProfileStore(), keys=keys, policies=policies)
    async with serve(app) as client:
        statuses = [
            (await client.request(method, path, json=body)).status_code
            for method, path, body in KEYED_ROUTES
        ]
    assert set(statuses) <= {200, 201, 204, 404}, statuses


@pytest.mark.parametrize(("failure", "kind"), FAILURES, ids=IDS)
def test_the_kind_of_a_failure_names_no_server(failure: BaseException, kind: str) -> None:
    assert store_error_kind(failure) == kind
    assert HOST not in kind
    assert PORT not in kind


def test_a_bug_is_not_taken_for_redis_failing() -> None:
    """Only Redis's failures are 503s; what the handlers do not know stays a 500."""
    app = create_app(SETTINGS, store=MemoryProfileStore())
    handled = {cls for cls in app.exception_handlers if isinstance(cls, type)}
    for bug in (KeyError, ValueError, AttributeError, RuntimeError):
        assert not any(issubclass(bug, cls) for cls in handled), bug


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (f"redis://user:{PASSWORD}@{HOST}:{PORT}/2", ADDRESS),
        ("rediss://cache.internal", "cache.internal:6379"),
        (f"unix://:{PASSWORD}@/run/redis.sock?db=1", "/run/redis.sock"),
        ("http://nope", "an unreadable URL"),
    ],
)
def test_the_log_names_where_redis_is_without_credentials(url: str, logged: str) -> None:
    assert store_address(url) == logged
