"""A collection with a field mapping in a real worker and API, over the real broker and
Redis: the worker writes the record document with the view, in the same commit; the
API serves it (single and batch reads), and maps the view on the fly for a profile
without one (written before the mapping)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import alive, running_api, worker_with_rules
from traitflow.config import Settings
from traitflow.store import record_header

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    event: Order Completed
audiences:
  - name: vip
    condition: spend >= 100.0
"""
FIELDS = {"ltv": "attributes.spend", "email": "traits.email", "in_vip": "_audiences.vip"}


def test_a_mapped_record_is_written_by_the_worker_and_read_in_one_trip(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with worker_with_rules(
        settings,
        tmp_path,
        RULES,
        f"tfmap-{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        collections={"users": {"entity": "user", "fields": FIELDS}, "profiles": "user"},
        destinations={},
    ) as own:
        settings, keys, publish, worker = own.settings, own.keys, own.publish, own.worker
        mapping = settings.record_mappings["user"]["users"]
        user = f"map-{uuid.uuid4().hex[:8]}"

        def view(pid: str) -> Any:
            raw = redis_client.get(keys.view("user", pid))
            return orjson.loads(raw) if raw else None

        publish(
            [
                {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "messageId": f"{user}-order",
                    "properties": {"revenue": 120.0},
                },
            ]
        )
        wait_until(
            lambda: alive(worker) and (v := view(user)) is not None and v["version"] == 2,
            timeout=60,
            what="the worker to write the profile",
        )
        expected = {"ltv": 120.0, "email": f"{user}@example.com", "in_vip": True}
        # the document is committed with the view: the view's version is the header's
        pid = view(user)["id"]
        stored = redis_client.get(keys.record("user", "users", pid))
        assert isinstance(stored, bytes)
        header = record_header(mapping.stamp, 2)
        assert stored.startswith(header)
        assert orjson.loads(stored[len(header) :]) == expected

        with running_api(settings, "api") as url:
            token = create_key(settings, "mapped-admin", admin=True)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, timeout=5.0, headers=headers) as api:
                path = f"/v1/collections/users/records/user_id/{user}"
                served = api.get(path)
                assert served.status_code == 200
                assert served.content == stored[len(header) :]  # as stored
                assert list(served.json().items()) == list(expected.items())
                assert api.get(path, params={"fields": "in_vip"}).json() == {"in_vip": True}
                batch = api.post(
                    "/v1/collections/users/records/batch",
                    json={
                        "lookups": [
                            {"index": "user_id", "value": user},
                            {"index": "user_id", "value": f"{user}-none"},
                        ]
                    },
                )
                assert batch.json() == {"records": [expected, None]}
                whole = api.get(f"/v1/collections/profiles/records/user_id/{user}")
                assert whole.json() == view(user)  # unmapped: the view, as before

                # a profile written before the mapping has no document: mapped on the fly
                redis_client.delete(keys.record("user", "users", pid))
                assert api.get(path).json() == expected
                assert api.post(
                    "/v1/collections/users/records/batch",
                    json={"lookups": [{"index": "id", "value": pid}]},
                ).json() == {"records": [expected]}
