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
    assert (
        found[no_ids]["traitflow.error.reason"] == b"event carries no identity of any entity "
        b"(user: user_id, email, anonymous_id; account: account_id)"
    )
    assert found[no_name]["traitflow.error.reason"] == b"track event has no 'event' name"
    assert found[no_name]["traitflow.error.topic"] == next(iter(settings.sources)).encode()
    assert int(found[no_name]["traitflow.error.offset"]) >= 0

    # the good event of the same batch was processed
    path = f"/v1/collections/users/records/user_id/{user}"
    profile = wait_until(lambda: api.get(path).status_code == 200 and api.get(path).json())
    assert profile["attributes"]["page_views"] == 1


def test_type_errors_skip_the_attribute_and_are_counted(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    """A string where a number is summed: the event still counts where it can, the
    skip is in the worker's metrics and its log carries the messageId."""
    user = user_id()
    mid = f"{user}-free"
    metrics_url = f"http://{settings.api_host}:{settings.worker_metrics_port}/metrics"

    def skips() -> float:
        text = httpx.get(metrics_url).text
        line = 'traitflow_attribute_skips_total{attribute="lifetime_value",kind="wrong_type"}'
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    before = skips()
    order = {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "messageId": mid,
        "properties": {"revenue": "free", "product_id": "sku-1"},
    }
    publish([order])
    path = f"/v1/collections/users/records/user_id/{user}"
    profile = wait_until(lambda: api.get(path).status_code == 200 and api.get(path).json())
    assert profile["attributes"]["purchase_count"] == 1
    assert profile["attributes"]["lifetime_value"] == 0
    wait_until(lambda: skips() >= before + 1, what="the skip in the worker's metrics")
    wait_until(
        lambda: f"attribute lifetime_value skipped event {mid}" in worker.log_file.read_text(),
        what="the skip in the worker's log",
    )
