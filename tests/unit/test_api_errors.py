"""A store that fails in any way is a JSON 503 with Retry-After on every read route,
with nothing of Redis in the body (the log and a metric have it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis.exceptions

from api.app import create_app
from api.keys import MemoryKeyStore
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.resp import RespConnectionError, RespError
from traitflow.store import MemoryProfileStore

pytestmark = pytest.mark.anyio

ADDRESS = "10.1.2.3:6390"

FAILURES: list[tuple[BaseException, str]] = [
    (RespError("LOADING Redis is loading the dataset in memory"), "LOADING"),
    (RespError("READONLY You can't write against a read only replica."), "READONLY"),
    (RespError(f"MOVED 3999 {ADDRESS}"), "MOVED"),
    (
        redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
        "OOM",
    ),
    (
        RespConnectionError(f"cannot connect to Redis: Connect call failed ('{ADDRESS}')"),
        "connection",
    ),
    (redis.exceptions.ConnectionError(f"Error 111 connecting to {ADDRESS}"), "connection"),
    (TimeoutError(), "timeout"),
    (redis.exceptions.TimeoutError(f"Timeout reading from {ADDRESS}"), "timeout"),
]

READS = [
    ("GET", "/v1/collections/users/records/id/u-1", None),
    ("GET", "/v1/collections/users/records/user_id/u-1", None),
    ("POST", "/v1/collections/users/records/batch", {"lookups": [{"index": "id", "value": "u"}]}),
    (
        "POST",
        "/v2/activation",
        {
            "entity": "user",
            "destinationId": "web-personalisation",
            "id": {"type": "user_id", "value": "u"},
        },
    ),
    (
        "GET",
        "/access/entities?schema.name=_xdm.context.profile&entityId=u&entityIdNS=user_id",
        None,
    ),
]


class FailingStore(MemoryProfileStore):
    def __init__(self, failure: BaseException) -> None:
        super().__init__()
        self.failure = failure

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        raise self.failure

    async def read_views(self, entity: str, lookups: Sequence[tuple[str, str]]) -> Any:
        raise self.failure

    async def read_profiles(self, entity: str, lookups: Sequence[tuple[str, str]]) -> Any:
        raise self.failure


@pytest.mark.parametrize(("failure", "kind"), FAILURES, ids=[kind for _, kind in FAILURES])
async def test_every_store_failure_is_a_json_503_without_detail(
    failure: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(), store=FailingStore(failure), keys=MemoryKeyStore())
    async with serve(app) as client:
        for method, path, body in READS:
            response = await client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"error": "profile store unavailable; try again"}
        sample = app.state.metrics.registry.get_sample_value
        assert sample("traitflow_api_redis_errors_total", {"kind": kind}) == len(READS)
    assert ADDRESS.split(":")[0] in caplog.text or kind in caplog.text  # the detail is logged
