"""A source delete job end to end: a real worker (and its backfill process) over two
sources' topics, a real API process that runs the job made through `POST /system/jobs`,
a real broker and Redis. Profiles only the deleted source made are erased (tombstoned);
those another source made too lose the deleted source's traits, and their computed
attributes are recomputed without its events (equal to the batch oracle's over the other
source's events and what the deleted one sent after the job began), while they go on
being served their old values until the recomputation is done; the others keep
theirs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from attributes.events import iso_from_ms
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.oracle import expected_view
from tests.integration.workers import ROOT, OwnWorker, running_api, worker_with_rules
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = (ROOT / "examples" / "rules.yaml").read_text()


def at(minutes_ago: int) -> str:
    return iso_from_ms(int(time.time() * 1000) - minutes_ago * 60_000)


def identify(user: str, minutes_ago: int, **traits: Any) -> dict[str, Any]:
    body = {"type": "identify", "userId": user, "traits": traits}
    return body | {"timestamp": at(minutes_ago), "messageId": f"{user}-i{minutes_ago}"}


def order(user: str, minutes_ago: int, revenue: float) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "track", "event": "Order Completed", "userId": user}
    body |= {"properties": {"revenue": revenue}, "timestamp": at(minutes_ago)}
    return body | {"messageId": f"{user}-o{minutes_ago}"}


def published(
    own: OwnWorker, events: dict[str, dict[str, list[dict[str, Any]]]], client: redis.Redis
) -> Callable[[str], int]:
    """Publish each topic's events (by user); a user's served `purchase_count` (0
    before a view)."""
    for topic, by_user in events.items():
        Publisher(own.settings, topic)([event for sent in by_user.values() for event in sent])

    def count(user: str) -> int:
        raw = client.get(own.keys.view("user", user))
        return 0 if raw is None else int(orjson.loads(raw)["attributes"]["purchase_count"])

    return count


@contextlib.contextmanager
def crm_deleted(own: OwnWorker) -> Iterator[tuple[httpx.Client, str]]:
    """A real API process (which runs source delete jobs) and an admin client of it,
    once it has made a job deleting source `crm`: (the client, the job's id)."""
    token = create_key(own.settings, f"jobs-admin-{uuid.uuid4().hex[:6]}", admin=True)
    with running_api(own.settings, "api") as url:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as api:
            made = api.post("/system/jobs", json={"dataSetId": "crm"})
            assert made.status_code == 201, made.text
            yield api, made.json()["id"]


def test_a_source_delete_job_removes_what_its_source_contributed(
    settings: Settings, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    name = f"tfsrcjob-{run}"
    web_topic, crm_topic = f"{name}-web", f"{name}-crm"
    sources = {web_topic: "web", crm_topic: "crm"}
    web_only, crm_only, both = f"w-{run}", f"c-{run}", f"b-{run}"
    web_events = {
        web_only: [identify(web_only, 9, plan="free"), order(web_only, 8, 3)],
        both: [identify(both, 7, plan="pro"), order(both, 6, 4)],
    }
    crm_events = {
        crm_only: [identify(crm_only, 9, tier="gold"), order(crm_only, 8, 5)],
        both: [identify(both, 5, tier="silver"), order(both, 4, 6)],
    }
    # a slow backfill: the recomputation lasts seconds, while the views are watched
    slow = {"sources": sources, "backfill_rate_per_s": 1.0}
    with worker_with_rules(settings, tmp_path, RULES, name, **slow) as own:
        client = redis.Redis.from_url(own.settings.redis_url)
        keys = own.keys
        count = published(own, {web_topic: web_events, crm_topic: crm_events}, client)

        wait_until(
            lambda: count(web_only) == 1 and count(crm_only) == 1 and count(both) == 2,
            timeout=60,
            what="every profile to be written",
        )
        untouched = orjson.loads(client.get(keys.view("user", web_only)) or b"null")
        late = order(both, 1, 10)  # sent by crm once the job began: it counts
        counts: set[tuple[int, int]] = set()
        with crm_deleted(own) as (api, job_id):

            def shown() -> dict[str, Any]:
                found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
                return found

            wait_until(
                lambda: shown()["progress"]["attributes"] == "RECOMPUTING",
                timeout=30,
                what="the job to ask for the recomputation (its horizon noted)",
            )
            Publisher(own.settings, crm_topic)([late])

            def finished() -> dict[str, Any] | None:
                counts.add((count(web_only), count(both)))
                found = shown()
                return found if found["status"] in ("COMPLETED", "FAILED") else None

            job = wait_until(finished, timeout=90, what="the job to complete")
            assert job["status"] == "COMPLETED", job
            assert job["progress"]["attributes"] == "RECOMPUTED"
            assert job["progress"]["commandsPublished"] == 2
            assert job["progress"]["commandsApplied"] == 2
            listed = api.get("/system/jobs").json()["children"]
            assert job_id in [j["id"] for j in listed]

        # while it was recomputed, each profile was served a value it had: the old one,
        # or (`both`) the old one with the late order, never a partial recomputation
        assert counts <= {(1, 2), (1, 3)}, counts
        assert len(counts) > 1  # watched before the late order was counted, and after
        assert client.get(keys.view("user", crm_only)) is None
        assert client.get(keys.state("user", crm_only)) is None
        assert list(client.scan_iter(f"{own.settings.key_prefix}:t:user:*"))
        kept = orjson.loads(client.get(keys.view("user", web_only)) or b"null")
        assert (kept["attributes"], kept["traits"]) == (
            untouched["attributes"],
            untouched["traits"],
        )
        view = orjson.loads(client.get(keys.view("user", both)) or b"null")
        oracle = expected_view(own.settings, [*web_events[both], late], both)
        assert view["traits"] == {"plan": "pro"}
        assert view["attributes"] == oracle["attributes"]
        assert view["attributes"]["purchase_count"] == 2  # web's order and the late one
        client.close()


def test_a_recomputation_goes_on_after_its_backfill_process_is_killed_9(
    settings: Settings, tmp_path: Path
) -> None:
    """kill -9 of the backfill process while it recomputes: the supervisor starts it
    again, the new one takes the recomputation once the dead one's lease is over and
    computes it again (what the dead one joined is not joined twice), and every
    profile ends equal to the batch oracle over what remains."""
    run = uuid.uuid4().hex[:6]
    name = f"tfsrckill-{run}"
    web_topic, crm_topic = f"{name}-web", f"{name}-crm"
    sources = {web_topic: "web", crm_topic: "crm"}
    web_events = {f"w{n}-{run}": [order(f"w{n}-{run}", 9 - n, 1 + n)] for n in range(4)}
    crm_events = {f"w{n}-{run}": [order(f"w{n}-{run}", 5 - n, 10 * n)] for n in range(2)}
    slow = {"sources": sources, "backfill_rate_per_s": 1.0, "backfill_process": True}
    with worker_with_rules(settings, tmp_path, RULES, name, **slow) as own:
        client = redis.Redis.from_url(own.settings.redis_url)
        keys = own.keys
        count = published(own, {web_topic: web_events, crm_topic: crm_events}, client)

        wait_until(
            lambda: all(count(u) == 1 + len(crm_events.get(u, [])) for u in web_events),
            timeout=60,
            what="every profile to be written",
        )
        log = own.settings.home / "worker" / "worker.log"
        with crm_deleted(own) as (api, job_id):
            wait_until(
                lambda: "recomputing every attribute" in log.read_text(),
                timeout=60,
                what="the recomputation to begin (it then reads for seconds)",
            )
            started = re.findall(r"backfill process started \(pid (\d+)\)", log.read_text())
            killed = int(started[-1])
            os.kill(killed, signal.SIGKILL)
            wait_until(
                lambda: f"(pid {killed}) exited with -9" in log.read_text(),
                timeout=30,
                what="the supervisor to see the backfill process die",
            )

            def finished() -> dict[str, Any] | None:
                found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
                return found if found["status"] in ("COMPLETED", "FAILED") else None

            job = wait_until(finished, timeout=150, what="the job to complete")
            assert job["status"] == "COMPLETED", job
            assert job["progress"]["attributes"] == "RECOMPUTED"

        assert len(re.findall(r"backfill process started", log.read_text())) == 2
        for user, events in web_events.items():
            view = orjson.loads(client.get(keys.view("user", user)) or b"null")
            oracle = expected_view(own.settings, events, user)
            assert view["attributes"] == oracle["attributes"], user
        client.close()
