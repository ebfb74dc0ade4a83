"""A source delete job on the spread layout, end to end with its recomputation: the
issue-16 scenario of `test_source_jobs.py` on the local Redis Cluster, where source
delete jobs (`traitflow.spread_source_jobs`) and the rule lifecycle
(`traitflow.spread_rules`, backfills through the spread store) meet. A real worker
(with its backfill), a real API process that runs the job, a web and a crm topic:
profiles only crm made are erased, the others lose crm's traits and have their
computed attributes recomputed without crm's events (plus one crm sent after the job
began), and are served their old values until then, never a partial recomputation."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.cluster import RedisCluster

from tests.integration.cluster import LocalCluster, cluster_possible
from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.oracle import expected_view
from tests.integration.test_redis_cluster_spread_worker import BUCKETS, spread_settings
from tests.integration.test_source_jobs import RULES, identify, order
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.spread_layout import SpreadLayout
from traitflow.topics import ensure_topics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_possible(), reason="needs redis-server and redis-cli"),
]


def test_a_source_delete_job_on_the_spread_layout_recomputes_the_attributes(
    settings: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    name = f"tfsr-{run}"
    web_topic, crm_topic = f"{name}-web", f"{name}-crm"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    own = spread_settings(
        settings, name, cluster, tmp_path, rules_path=rules, backfill_rate_per_s=1.0,
        sources={web_topic: "web", crm_topic: "crm"},
    )  # fmt: skip
    asyncio.run(ensure_topics(own))
    web_only, crm_only, both = f"w-{run}", f"c-{run}", f"b-{run}"
    web_events = {
        web_only: [identify(web_only, 9, plan="free"), order(web_only, 8, 3)],
        both: [identify(both, 7, plan="pro"), order(both, 6, 4)],
    }
    crm_events = {
        crm_only: [identify(crm_only, 9, tier="gold"), order(crm_only, 8, 5)],
        both: [identify(both, 5, tier="silver"), order(both, 4, 6)],
    }
    for topic, by_user in ((web_topic, web_events), (crm_topic, crm_events)):
        Publisher(own, topic)([event for sent in by_user.values() for event in sent])
    client = RedisCluster.from_url(cluster.url)
    layout = SpreadLayout.of(own.key_prefix, BUCKETS)

    def view(user: str) -> Any:
        raw = client.get(layout.keys(0).view("user", user))
        return None if raw is None else orjson.loads(raw)

    def count(user: str) -> int:
        found = view(user)
        return 0 if found is None else int(found["attributes"]["purchase_count"])

    worker = start_worker(own, "worker")
    try:
        wait_until(
            lambda: alive(worker) and (count(web_only), count(crm_only), count(both)) == (1, 1, 2),
            timeout=90,
            what="every profile to be written",
        )
        untouched = view(web_only)
        late = order(both, 1, 10)  # sent by crm once the job began: it counts
        counts: set[tuple[int, int]] = set()
        token = create_key(own, "jobs-admin", admin=True, rate_per_s=1e5, burst=100_000)
        headers = {"Authorization": f"Bearer {token}"}
        with (
            running_api(own, "api") as url,
            httpx.Client(base_url=url, headers=headers, timeout=10) as api,
        ):
            made = api.post("/system/jobs", json={"dataSetId": "crm"})
            assert made.status_code == 201, made.text
            job_id = made.json()["id"]

            def shown() -> dict[str, Any]:
                found: dict[str, Any] = api.get(f"/system/jobs/{job_id}").json()
                return found

            wait_until(
                lambda: shown()["progress"]["attributes"] == "RECOMPUTING",
                timeout=60,
                what="the job to ask for the recomputation (its horizon noted)",
            )
            Publisher(own, crm_topic)([late])

            def finished() -> dict[str, Any] | None:
                assert alive(worker), "the worker stopped"
                counts.add((count(web_only), count(both)))
                found = shown()
                return found if found["status"] in ("COMPLETED", "FAILED") else None

            job = wait_until(finished, timeout=180, what="the job to complete")
        assert job["status"] == "COMPLETED", job
        assert job["progress"]["attributes"] == "RECOMPUTED"
        assert job["progress"]["commandsPublished"] == 2
        assert job["progress"]["commandsApplied"] == 2

        # while it was recomputed, each profile was served a value it had: the old one,
        # or (`both`) the old one with the late order, never a partial recomputation
        assert counts <= {(1, 2), (1, 3)}, counts
        assert view(crm_only) is None
        assert not client.exists(layout.keys(0).state("user", crm_only))
        kept = view(web_only)
        assert (kept["attributes"], kept["traits"]) == (
            untouched["attributes"],
            untouched["traits"],
        )
        recomputed = view(both)
        oracle = expected_view(own, [*web_events[both], late], both)
        assert recomputed["traits"] == {"plan": "pro"}
        assert recomputed["attributes"] == oracle["attributes"]
        assert recomputed["attributes"]["purchase_count"] == 2  # web's order, the late one
    finally:
        worker.stop()
        client.close()
