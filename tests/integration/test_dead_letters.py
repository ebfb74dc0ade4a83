"""Malformed events reach the dead-letter topic with the reason and their bytes; one
the topic refuses is parked in Redis and ingestion goes on; `traitflow dead-letters`
lists, shows and replays them (replay's bookkeeping in detail:
test_dead_letter_replay.py; a missing dead-letter topic and stalls: test_stalls.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from streams.dead_letters import Letter
from tests.integration.conftest import Publisher, user_id, wait_until
from tests.integration.dead_letter_support import (
    dead_letters_cli,
    first_column,
    parked_letters,
    sample,
    scrape,
    topic_letters,
)
from traitflow.config import Settings
from traitflow.services import Daemon
from traitflow.topics import publish_records, read_dead_letters

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


def test_a_letter_the_topic_refuses_is_parked_and_ingestion_goes_on(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings, ingest_topic: str
) -> None:
    """A 2 MB event is a dead letter over the producer's 1 MB request size: parked with
    the produce error and counted; the next event of its partition is processed."""
    user, tag = user_id(), uuid.uuid4().hex
    huge = orjson.dumps(
        {"type": "track", "userId": user, "properties": {"tag": tag, "blob": "x" * 2_000_000}}
    )
    parked_before = sample(
        scrape(settings), "traitflow_dead_letters_parked_total", error="MessageSizeTooLargeError"
    )
    asyncio.run(
        publish_records(settings, [(ingest_topic, huge, {})], max_request_size=4 * 1024 * 1024)
    )
    publish([{"type": "page", "userId": user, "properties": {"tag": tag}}])  # same partition

    path = f"/v1/collections/users/records/user_id/{user}"
    profile = wait_until(lambda: api.get(path).status_code == 200 and api.get(path).json())
    assert profile["attributes"]["page_views"] == 1
    found = wait_until(lambda: [x for x in parked_letters(settings) if x.value == huge])
    letter = found[0]
    assert (letter.topic, letter.parked) == (ingest_topic, True)
    assert letter.error.startswith("MessageSizeTooLargeError")

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(settings)
        name, error = "traitflow_dead_letters_parked_total", "MessageSizeTooLargeError"
        return samples if sample(samples, name, error=error) > parked_before else None

    samples = wait_until(counted, what="the parked letter in the worker's metrics")
    assert sample(samples, "traitflow_parked_dead_letters") >= 1

    listed = dead_letters_cli(settings, "list", "--parked", "--limit", "1000")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith(letter.id))
    assert "parked" in row
    assert f"{ingest_topic}/{letter.partition}@{letter.offset}" in row
    assert "1.9 MiB" in row
    shown = dead_letters_cli(settings, "show", letter.id)
    assert shown.exit_code == 0, shown.output
    assert f"reason:  {letter.reason}" in shown.stdout
    assert "error:   MessageSizeTooLargeError" in shown.stdout
    assert "more characters (--full shows them all)" in shown.stdout
    assert len(shown.stdout) < 10_000
    whole = dead_letters_cli(settings, "show", letter.id, "--full")
    assert tag in whole.stdout
    assert len(whole.stdout) > 2_000_000


def test_topic_letters_are_listed_shown_and_replayed_once(
    worker: Daemon, publish: Publisher, settings: Settings
) -> None:
    """Replay publishes a letter's original bytes to its origin topic (the worker reads
    them again, and here dead-letters them again); a second replay leaves it out."""
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    tag = uuid.uuid4().hex
    bad = orjson.dumps({"type": "track", "userId": user_id(), "properties": {"tag": tag}})
    publish([bad])

    def letters_of_bad() -> list[Letter]:
        return [x for x in topic_letters(settings) if x.value == bad]

    first = wait_until(letters_of_bad, what="the dead letter")[0]
    listed = dead_letters_cli(settings, "list", "--limit", "1000")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith(f"{first.id} "))
    assert "topic" in row
    assert "track event has no 'event' name" in row
    shown = dead_letters_cli(settings, "show", first.id)
    assert shown.exit_code == 0, shown.output
    assert "reason:  track event has no 'event' name" in shown.stdout
    assert f"header:  traitflow.error.offset: {first.offset}" in shown.stdout
    assert f'"tag": "{tag}"' in shown.stdout  # the value, as pretty JSON

    filters = ["--since", since, "--reason", "no 'event' NAME"]
    replayed = dead_letters_cli(settings, "replay", *filters)
    assert replayed.exit_code == 0, replayed.output
    assert "published" in replayed.stdout

    again = wait_until(lambda: len(letters_of_bad()) >= 2 and letters_of_bad())
    assert max(x.offset for x in again) > first.offset  # read again from its new offset
    second = next(x for x in again if x.offset > first.offset)
    dry = dead_letters_cli(settings, "replay", *filters, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert first.id not in first_column(dry.stdout)
    assert second.id in first_column(dry.stdout)
    listed = dead_letters_cli(settings, "list", "--limit", "1000")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(f"{first.id} "))
    assert "topic, replayed" in row
