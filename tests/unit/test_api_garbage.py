"""Whatever is posted to a read endpoint, the answer is a 4xx JSON object, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from api.app import create_app
from api.keys import MemoryKeyStore
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

ENDPOINTS = ["/v1/collections/users/records/batch", "/v2/activation", "/access/entities"]

GARBAGE: list[bytes] = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"[1, 2, 3]",
    b"null",
    b"true",
    b"42",
    b'"a string"',
    b"1" * 5000,  # a huge number
    b"1e999999",
    b"NaN",
    b"[" * 5000 + b"]" * 5000,  # deep nesting
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b"\x00\xff\xfe garbage",
    b'{"lookups": 1e400, "id": -1e400, "identities": 123456789012345678901234567890}',
    b'{"lookups": [null, 1, "x", [], {}], "identities": [null, {}, []]}',
    b'{"entity": {}, "destinationId": {"x": 1}, "id": {"type": [], "value": {}}}',
    b'{"destinationId": "web-personalisation", "entity": "user", "id": {"type": {}, "value": 1}}',
    b'{"destinationId": "web-personalisation", "entity": "user", "id": [[[[]]]]}',
    b'{"destinationId": "web-personalisation", "entity": "user", "id": 1e400}',
    b'{"schema": {"name": ["x"]}, "identities": [{"entityId": null}], "fields": {}}',
    b'{"schema": "x", "identities": [{"entityId": "a", "entityIdNS": "b"}]}',
    b'{"lookups": [{"index": "id", "value": "\\ud800"}]}',  # a lone surrogate
    orjson.dumps({"lookups": [{"index": "id", "value": "x" * 100_000}]}),
    orjson.dumps({"lookups": [{"index": "id", "value": "u"}] * 5000}),
]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The one place a test client is built (it sends an admin key)."""
    app = create_app(Settings(), store=MemoryProfileStore(), keys=MemoryKeyStore())
    async with serve(app) as client:
        yield client


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_garbage_is_a_4xx_json_object(
    client: httpx.AsyncClient, endpoint: str, content_type: str
) -> None:
    for garbage in GARBAGE:
        response = await client.post(
            endpoint, content=garbage, headers={"content-type": content_type}
        )
        assert 400 <= response.status_code < 500, (garbage[:60], response.text[:200])
        assert response.headers["content-type"] == "application/json"
        answer = response.json()
        assert isinstance(answer, dict)
        assert len(answer) == 1
        assert isinstance(next(iter(answer.values())), str)
