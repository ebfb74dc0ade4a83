"""Caching headers of single-profile responses (`api.caching`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from api.app import create_app
from api.caching import etag, matches, view_version
from attributes.profile import ProfileState, encode_state
from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.api_support import serve
from traitflow.config import Settings
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

PATH = "/v1/collections/users/records/id/u-1"


async def real_view(rules: RuleSet, lines: list[bytes]) -> bytes:
    """A view as the worker writes it: the example events through the batch processor."""
    store = MemoryProfileStore()
    processor = BatchProcessor(rules, store, ListDeadLetters())
    await processor.process([Record("t", 0, i, line, 0) for i, line in enumerate(lines)])
    return next(iter(store.views.values()))


@pytest.fixture
async def view(example_rules: RuleSet, example_lines: list[bytes]) -> bytes:
    return await real_view(example_rules, example_lines)


@pytest.fixture
async def client(view: bytes) -> AsyncIterator[httpx.AsyncClient]:
    store = MemoryProfileStore()
    state = ProfileState(id="u-1")
    await store.save("user", [ProfileWrite(state, encode_state(state), view, [])])
    app = create_app(Settings(collections={"users": "user"}), store=store)
    async with serve(app) as client:  # with an admin key
        yield client


async def test_a_real_view_ends_with_its_version(view: bytes) -> None:
    """`view_version` reads the version from the tail: `render_view` must keep it last."""
    version = orjson.loads(view)["version"]
    assert isinstance(version, int)
    assert version > 0
    assert view.endswith(b'"version":%d}' % version)
    assert view_version(view) == version


def test_version_of_other_layouts_is_parsed() -> None:
    assert view_version(b'{"version": 7, "id": "x"}') == 7
    assert view_version(b'{"id":"x","a":{"version":3}}') is None
    assert view_version(b'{"id":"x"}') is None
    assert view_version(b"not json") is None
    assert view_version(b'{"version":true}') is None
    assert view_version(b"[1]") is None


async def test_200_carries_etag_cache_control_and_version(
    client: httpx.AsyncClient, view: bytes
) -> None:
    response = await client.get(PATH)
    assert response.status_code == 200
    assert response.content == view
    assert response.headers["etag"] == etag(view)
    assert response.headers["etag"].startswith('"')
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-profile-version"] == str(orjson.loads(view)["version"])
    assert "last-modified" not in response.headers


async def test_etag_changes_with_the_bytes(view: bytes) -> None:
    assert etag(view) == etag(bytes(view))
    assert etag(view) != etag(view.replace(b'"version":', b'"version":1'))


@pytest.mark.parametrize(
    "if_none_match",
    [
        "{tag}",
        "W/{tag}",
        '"0000000000000000", {tag}',
        '"a",W/{tag} , "b"',
        "*",
        " * ",
    ],
)
async def test_304_when_if_none_match_matches(
    client: httpx.AsyncClient, view: bytes, if_none_match: str
) -> None:
    response = await client.get(
        PATH, headers={"If-None-Match": if_none_match.format(tag=etag(view))}
    )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag(view)
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-profile-version"] == str(orjson.loads(view)["version"])


@pytest.mark.parametrize("if_none_match", ['"0000000000000000"', "", "W/", '"a", "b"'])
async def test_200_when_if_none_match_does_not_match(
    client: httpx.AsyncClient, view: bytes, if_none_match: str
) -> None:
    response = await client.get(PATH, headers={"If-None-Match": if_none_match})
    assert response.status_code == 200
    assert response.content == view


async def test_a_missing_record_is_never_304(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/collections/users/records/id/nobody", headers={"If-None-Match": "*"}
    )
    assert response.status_code == 404


def test_matches_compares_opaque_tags_exactly() -> None:
    assert matches('"abc"', '"abc"')
    assert not matches('"abcd"', '"abc"')
    assert not matches("abc", '"abc"')
