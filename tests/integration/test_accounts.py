"""B2B accounts end to end: `group` calls and grouped users' events in on the real
broker, account profiles out of the real API, next to the users' own profiles.

The worker builds a profile for every entity whose identities an event carries: a
user's order that carries `context.groupId` counts for the user *and* for the account.
The two must stay apart where they should: an account's traits come from `group` calls
only, a user's from `identify` calls only. These tests drive the session worker and API
server (conftest) with the default entities (`user`, `account`) and the example rules,
whose last four attributes are the account's:

- `account_revenue`: sum of `properties.revenue` of "Order Completed";
- `account_orders`: count of "Order Completed";
- `active_users_30_days`: distinct `userId`s of the account's events in the last 30 days;
- `key_account`: derived, `account_revenue >= 1000.0`.

Windows are evaluated at the worker's clock, so event times are set relative to now.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from attributes.events import iso_from_ms
from tests.integration.conftest import Publisher, create_key, user_id, wait_until
from traitflow.config import Settings
from traitflow.services import Daemon
from traitflow.topics import read_dead_letters

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
NO_IDENTITY = (
    b"event carries no identity of any entity "
    b"(user: user_id, email, anonymous_id; account: account_id)"
)


def account_id() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


def days_ago(now_ms: int, days: float) -> str:
    return iso_from_ms(now_ms - int(days * DAY_MS))


def grouped(account: str, **fields: Any) -> dict[str, Any]:
    """An event of a user of `account`, as SDKs send it: `context.groupId` set."""
    return {"context": {"groupId": account}, "messageId": uuid.uuid4().hex} | fields


def order(user: str, revenue: float, ts: str, account: str | None = None) -> dict[str, Any]:
    fields = {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "properties": {"revenue": revenue},
        "timestamp": ts,
    }
    return grouped(account, **fields) if account else fields


def record(api: httpx.Client, collection: str, index: str, value: str) -> httpx.Response:
    return api.get(f"/v1/collections/{collection}/records/{index}/{value}")


def at_version(api: httpx.Client, collection: str, index: str, value: str, version: int) -> Any:
    """The record once it has applied `version` events, else None."""
    response = record(api, collection, index, value)
    if response.status_code == 200 and response.json()["version"] == version:
        return response.json()
    return None


def dead_letters(settings: Settings) -> dict[bytes, dict[str, bytes]]:
    """The whole dead-letter topic: original bytes -> headers."""
    return dict(asyncio.run(read_dead_letters(settings, wait_s=1.0)))


def test_an_account_is_built_from_its_users_events_apart_from_their_profiles(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    account = account_id()
    ada, bob, cy = user_id(), user_id(), user_id()
    now = int(time.time() * 1000)
    publish(
        [
            # an identify that carries the group: the account gets the event, not its traits
            grouped(
                account,
                type="identify",
                userId=ada,
                traits={"name": "Ada Lovelace", "plan": "free"},
                timestamp=days_ago(now, 6),
            ),
            {
                "type": "group",
                "messageId": uuid.uuid4().hex,
                "userId": ada,
                "groupId": account,
                "traits": {"name": "Acme Corp", "plan": "enterprise"},
                "timestamp": days_ago(now, 5),
            },
            order(ada, 640.0, days_ago(now, 4), account),
            order(bob, 425.5, days_ago(now, 3), account),
            grouped(account, type="page", userId=bob, timestamp=days_ago(now, 2)),
            # long ago: counts for the revenue, not for the users active in 30 days
            order(cy, 8.0, days_ago(now, 45), account),
            # Ada's own order, not on behalf of the account
            order(ada, 30.0, days_ago(now, 1)),
        ]
    )

    # six events carry the account's id (all but Ada's own order)
    profile = wait_until(
        lambda: at_version(api, "accounts", "account_id", account, 6), what="the account"
    )
    assert profile["id"] == account
    assert profile["entity"] == "account"
    assert profile["identities"] == {"account_id": [account]}
    assert profile["traits"] == {"name": "Acme Corp", "plan": "enterprise"}
    assert profile["attributes"] == {
        "account_revenue": 640.0 + 425.5 + 8.0,
        "account_orders": 3,
        "active_users_30_days": 2,  # Ada and Bob; Cy's order is 45 days old
        "key_account": True,  # 1073.5 >= 1000
    }
    assert profile["first_seen"] == days_ago(now, 45)
    assert profile["last_seen"] == days_ago(now, 2)
    assert record(api, "accounts", "id", account).json() == profile

    # the users' profiles: their own attributes and identify traits, no group traits
    ada_profile = wait_until(lambda: at_version(api, "users", "user_id", ada, 4), what="Ada")
    assert ada_profile["identities"] == {"user_id": [ada]}
    assert ada_profile["traits"] == {"name": "Ada Lovelace", "plan": "free"}
    assert ada_profile["attributes"]["lifetime_value"] == 640.0 + 30.0
    assert ada_profile["attributes"]["purchase_count"] == 2
    bob_profile = wait_until(lambda: at_version(api, "users", "user_id", bob, 2), what="Bob")
    assert bob_profile["traits"] == {}
    assert bob_profile["attributes"]["lifetime_value"] == 425.5
    assert bob_profile["attributes"]["page_views"] == 1

    # each collection serves its own entity only
    assert record(api, "accounts", "user_id", ada).status_code == 404
    assert record(api, "users", "account_id", account).status_code == 404


def test_a_key_scoped_to_accounts_reads_accounts_only(
    worker: Daemon, publish: Publisher, api_server: str, settings: Settings
) -> None:
    account, user = account_id(), user_id()
    publish([{"type": "group", "userId": user, "groupId": account, "traits": {"name": "Initech"}}])
    token = create_key(settings, "accounts reader", collections=["accounts"])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_server, timeout=5.0, headers=headers) as client:
        wait_until(
            lambda: at_version(client, "accounts", "account_id", account, 1), what="the account"
        )
        assert record(client, "users", "user_id", user).status_code == 403


def test_a_group_call_with_only_a_group_id_builds_the_account(
    worker: Daemon, publish: Publisher, api: httpx.Client, settings: Settings
) -> None:
    account = account_id()
    now = int(time.time() * 1000)
    group = orjson.dumps(
        {
            "type": "group",
            "messageId": uuid.uuid4().hex,
            "groupId": account,
            "traits": {"name": "Globex", "plan": "team"},
            "timestamp": days_ago(now, 1),
        }
    )
    publish([group])

    profile = wait_until(
        lambda: at_version(api, "accounts", "account_id", account, 1), what="the account"
    )
    assert profile["identities"] == {"account_id": [account]}
    assert profile["traits"] == {"name": "Globex", "plan": "team"}
    assert profile["attributes"] == {
        "account_revenue": 0,
        "account_orders": 0,
        "active_users_30_days": 0,  # a group call with no userId names no user
        "key_account": False,
    }
    # a dead letter is durable before the commit that moves past it: none was sent
    assert group not in dead_letters(settings)


def test_an_event_with_no_identity_of_any_entity_is_a_dead_letter(
    worker: Daemon, publish: Publisher, settings: Settings
) -> None:
    tag = uuid.uuid4().hex
    no_ids = orjson.dumps(
        {"type": "track", "event": "Order Completed", "properties": {"tag": tag, "revenue": 1.0}}
    )
    # values that mean "unknown" are no identity either
    unknown_ids = orjson.dumps(
        {
            "type": "group",
            "userId": "undefined",
            "anonymousId": "null",
            "groupId": "  ",
            "context": {"groupId": "none"},
            "traits": {"tag": tag},
        }
    )
    publish([no_ids, unknown_ids])

    def both() -> dict[bytes, dict[str, bytes]] | None:
        found = dead_letters(settings)
        return found if {no_ids, unknown_ids} <= found.keys() else None

    found = wait_until(both, what="two dead letters")
    assert found[no_ids]["traitflow.error.reason"] == NO_IDENTITY
    assert found[unknown_ids]["traitflow.error.reason"] == NO_IDENTITY
    assert found[no_ids]["traitflow.error.topic"] == next(iter(settings.sources)).encode()
