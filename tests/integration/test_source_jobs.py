"""A source delete job end to end: a real worker over two sources' topics, a real API
process that runs the job made through `POST /system/jobs`, a real broker and Redis.
Profiles only the deleted source made are erased (tombstoned); those another source
made too lose the deleted source's traits and keep their attribute values (equal to the
batch oracle's); the others are untouched."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from attributes.events import iso_from_ms
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.oracle import expected_view
from tests.integration.workers import ROOT, running_api, worker_with_rules
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
    with worker_with_rules(settings, tmp_path, RULES, name, sources=sources) as own:
        client = redis.Redis.from_url(own.settings.redis_url)
        keys = own.keys
        Publisher(own.settings, web_topic)([e for events in web_events.values() for e in events])
        Publisher(own.settings, crm_topic)([e for events in crm_events.values() for e in events])

        def count(user: str) -> int:
            raw = client.get(keys.view("user", user))
            return 0 if raw is None else int(orjson.loads(raw)["attributes"]["purchase_count"])

        wait_until(
            lambda: count(web_only) == 1 and count(crm_only) == 1 and count(both) == 2,
            timeout=60,
            what="every profile to be written",
        )
        untouched = client.get(keys.view("user", web_only))
        token = create_key(own.settings, f"jobs-admin-{run}", admin=True)
        with running_api(own.settings, "api") as url:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as api:
                made = api.post("/system/jobs", json={"dataSetId": "crm"})
                assert made.status_code == 201, made.text
                job_id = made.json()["id"]
                job = wait_until(
                    lambda: (
                        (found := api.get(f"/system/jobs/{job_id}").json())["status"]
                        in ("COMPLETED", "FAILED")
                        and found
                    ),
                    timeout=60,
                    what="the job to complete",
                )
                assert job["status"] == "COMPLETED", job
                assert job["progress"]["commandsPublished"] == 2
                assert job["progress"]["commandsApplied"] == 2
                listed = api.get("/system/jobs").json()["children"]
                assert job_id in [j["id"] for j in listed]

        assert client.get(keys.view("user", crm_only)) is None
        assert client.get(keys.state("user", crm_only)) is None
        assert list(client.scan_iter(f"{own.settings.key_prefix}:t:user:*"))
        assert client.get(keys.view("user", web_only)) == untouched
        view = orjson.loads(client.get(keys.view("user", both)) or b"null")
        oracle = expected_view(own.settings, [*web_events[both], *crm_events[both]], both)
        assert view["traits"] == {"plan": "pro"}
        assert view["attributes"] == oracle["attributes"]
        client.close()
