"""Treasure Data's Personalization API against a real `traitflow api` process, broker,
Redis and worker: a call's event is published and computed by the worker, and (read-
your-write) the offers it answers already reflect it; services and tokens made through
the admin API; TD's error codes one by one; the rate limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attributes.offers import CONTENT_TYPE, hash_token
from tests.integration.conftest import create_key, user_id
from tests.integration.workers import running_api, worker_with_rules
from traitflow.config import Settings
from traitflow.services import Daemon

pytestmark = pytest.mark.integration

ADMIN = "/v1/personalization/services"


@pytest.fixture
def service(api: httpx.Client) -> Iterator[dict[str, str]]:
    """A service made through the admin API (kept in Redis), its path and a token."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    made = api.put(
        f"{ADMIN}/{name}",
        json={
            "account_id": "42",
            "database": "p13n_db",
            "table": name,
            "offers": [
                {
                    "name": "offer_for_high_value",
                    "condition": "attributes.lifetime_value >= 100.0",
                    "attributes": {"status": "'high'", "value": "attributes.lifetime_value"},
                    "batch_segments": ["1588214"],
                }
            ],
        },
    )
    assert made.status_code == 201, made.text
    token = api.post(f"{ADMIN}/{name}/tokens", json={"instance_id": "site"}).json()["token"]
    yield {"name": name, "path": f"/p13n_db/{name}", "token": token}
    api.delete(f"{ADMIN}/{name}")


def headers(key: str, token: str, **override: str) -> dict[str, str]:
    sent = {
        "Content-Type": CONTENT_TYPE,
        "Authorization": f"TD1 42/{key}",
        "WP13n-Token": token,
        **override,
    }
    return {name: value for name, value in sent.items() if value}


def call(
    api_server: str, path: str, body: Any, key: str, token: str, **override: str
) -> httpx.Response:
    return httpx.post(
        f"{api_server}{path}", json=body, headers=headers(key, token, **override), timeout=10.0
    )


def test_a_call_is_computed_by_the_worker_and_its_offers_reflect_it(
    worker: Daemon, api_server: str, api: httpx.Client, settings: Settings, service: dict[str, str]
) -> None:
    key = create_key(settings, "td", collections=["users"], rate_per_s=1000.0, burst=1000)
    user = user_id()
    order = {"user_id": user, "event_name": "Order Completed", "revenue": 60.0}
    first = call(api_server, service["path"], order, key, service["token"])
    assert first.status_code == 200, first.text
    assert first.headers["x-event-applied"] == "true"
    assert first.json() == {"offers": {}}  # 60 is not enough

    second = call(api_server, service["path"], order, key, service["token"])
    assert second.headers["x-event-applied"] == "true"
    assert second.json() == {  # the event just sent makes 120: the answer has it
        "offers": {
            "offer_for_high_value": {
                "attributes": {"status": "high", "value": 120.0},
                "batch_segments": [{"id": "1588214"}],
            }
        }
    }
    record = api.get(f"/v1/collections/users/records/user_id/{user}").json()
    assert record["attributes"]["lifetime_value"] == 120.0
    assert record["attributes"]["purchase_count"] == 2


def test_tds_error_codes_one_by_one(
    api_server: str, api: httpx.Client, settings: Settings, service: dict[str, str]
) -> None:
    key = create_key(settings, "td-errors", collections=["users"], rate_per_s=1000.0, burst=1000)
    token = service["token"]
    account, instance, secret = token.split("/")
    walled = api.put(
        f"{ADMIN}/{service['name']}-walled",
        json={
            "account_id": "42",
            "database": "p13n_db",
            "table": "w",
            "allowed_ips": ["10.9.0.0/16"],
        },
    )
    assert walled.status_code == 201
    walled_token = api.post(
        f"{ADMIN}/{service['name']}-walled/tokens", json={"instance_id": "site"}
    ).json()["token"]
    body = {"user_id": user_id()}
    path = service["path"]
    cases = [
        (3000, path, body, {"WP13n-Token": ""}),
        (3001, path, body, {"WP13n-Token": f"{account}/{instance}/{secret[:-1]}x"}),
        (3001, "/p13n_db/not-this-table", body, {}),
        (3002, path, body, {"WP13n-Token": f"7/{instance}/{secret}"}),
        (3003, path, body, {"WP13n-Token": f"{account}/{secret}"}),
        (3004, path, {"age": 60}, {}),
        (3005, "/p13n_db/w", body, {"WP13n-Token": walled_token}),
    ]
    try:
        for code, where, sent, override in cases:
            response = call(api_server, where, sent, key, token, **override)
            assert response.status_code == 400, (code, response.text)
            assert response.json()["code"] == code, response.text
        wrong_type = call(
            api_server, path, body, key, token, **{"Content-Type": "application/json"}
        )
        assert wrong_type.status_code == 415
    finally:
        api.delete(f"{ADMIN}/{service['name']}-walled")


def test_past_the_rate_limit_a_429(
    worker: Daemon, api_server: str, settings: Settings, service: dict[str, str]
) -> None:
    key = create_key(settings, "td-limited", collections=["users"], rate_per_s=0.01, burst=2)
    body = {"user_id": user_id()}
    statuses = [
        call(api_server, service["path"], body, key, service["token"]).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_a_revoked_token_is_refused(
    api_server: str, api: httpx.Client, settings: Settings, service: dict[str, str]
) -> None:
    key = create_key(settings, "td-revoked", collections=["users"], rate_per_s=1000.0, burst=1000)
    assert api.delete(f"{ADMIN}/{service['name']}/tokens/site").status_code == 204
    # the process that revoked forgets its cache at once; this API has one process
    response = call(api_server, service["path"], {"user_id": user_id()}, key, service["token"])
    assert response.json()["code"] == 3001


AUDIENCE_RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    event: Order Completed
audiences:
  - name: big_spenders
    condition: spend >= 100.0
"""


def test_an_audience_offer_from_the_file_reflects_the_call_that_enters_it(
    settings: Settings, tmp_path: Path
) -> None:
    """A worker whose rules declare an audience, an API whose personalization file has
    an offer for it: the call whose event makes the profile enter the audience gets
    that offer in its own answer."""
    p13n = tmp_path / "p13n.yaml"
    p13n.write_text(
        f"""\
services:
  - name: web
    account_id: "42"
    database: p13n_db
    table: customers
    tokens: [{{instance_id: site, sha256: {hash_token("file-secret")}}}]
    offers:
      - name: vip
        audience: big_spenders
        attributes: {{spend: attributes.spend}}
"""
    )
    with worker_with_rules(
        settings,
        tmp_path,
        AUDIENCE_RULES,
        f"tftd-{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        personalization_file=p13n,
    ) as started:
        own = started.settings
        key = create_key(own, "td-file", collections=["users"], rate_per_s=1000.0, burst=1000)
        with running_api(own, "api") as url:
            user = user_id()

            def order(revenue: float) -> httpx.Response:
                body = {"user_id": user, "event_name": "Order Completed", "revenue": revenue}
                return call(url, "/p13n_db/customers", body, key, "42/site/file-secret")

            first = order(60.0)
            assert first.headers["x-event-applied"] == "true"
            assert first.json() == {"offers": {}}
            entering = order(60.0)  # 120 in all: the event of this very call enters it
            assert entering.headers["x-event-applied"] == "true"
            assert entering.json() == {
                "offers": {"vip": {"attributes": {"spend": 120.0}, "batch_segments": []}}
            }
