"""Malformed events reach the dead-letter topic with the reason and their bytes."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.integration.conftest import Publisher, user_id, wait_until
from traitflow.config import Settings
from traitflow.services import Daemon
from traitflow.topics import read_dead_letters

pytestmark = pytest.mark.integration


def test_bad_events_are_dead_lettered_and_good_ones_processed(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    tag = uuid.uuid4().hex
    user = user_id()
    not_json = f"not json {tag}".encode()
    no_ids = f'{{"type":"track","event":"x","properties":{{"tag":"{tag}"}}}}'.encode()
    no_name = f'{{"type":"track","userId":"{user}","properties":{{"tag":"{tag}"}}}}'.encode()
    publish([not_json, no_ids, no_name, {"type": "page", "userId": user, "properties": {"p": tag}}])

    def all_three() -> dict[bytes, dict[str, bytes]] | None:
        found = dict(asyncio.run(read_dead_letters(settings, wait_s=0.9)))
        return found if {not_json, no_ids, no_name} <= found.keys() else None

    found = wait_until(all_three, what="three dead letters")
    assert found[not_json]["traitflow.error.reason"].startswith(b"not a valid event")
    assert found[no_ids]["traitflow.error.reason"] == b"event has neither userId nor anonymousId"
    assert found[no_name]["traitflow.error.reason"] == b"track event has no 'event' name"
    assert found[no_name]["traitflow.error.topic"] == next(iter(settings.sources)).encode()
    assert int(found[no_name]["traitflow.error.offset"]) >= 0

    # the good event of the same batch was processed
    path = f"/v1/collections/users/records/user_id/{user}"
    profile = wait_until(lambda: api.get(path).status_code == 200 and api.get(path).json())
    assert profile["attributes"]["page_views"] == 1
