"""Several entities through the worker (`BatchProcessor` + `MemoryProfileStore`): users
and B2B accounts built from the same records, each with its own rules, identities and
traits; a record is a dead letter only when no entity claims it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.events import iso_from_ms
from attributes.identities import DEFAULT_ACCOUNT, DEFAULT_USER, IdentityRules
from attributes.rules import load_rules
from attributes.ruleset import RuleSet
from streams.entity import EntityProcessor
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.unit.conftest import EXAMPLES
from traitflow.memory_store import MemoryProfileStore

pytestmark = pytest.mark.anyio

TOPIC = "events"
#: the processing time (epoch s): 2026-11-11T11:00:00Z
NOW_S = 1_794_394_800.0
T0 = int(NOW_S * 1000) - 3_600_000  # an hour before: inside every window
MINUTE = 60_000
DAY_S = 86_400
ENTITIES = {"user": IdentityRules(DEFAULT_USER), "account": IdentityRules(DEFAULT_ACCOUNT)}


def event(kind: str, mid: str, minute: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": mid, "timestamp": iso_from_ms(T0 + minute * MINUTE)} | fields


def order(mid: str, minute: int, revenue: float, user: str, account: str) -> dict[str, Any]:
    properties = {"revenue": revenue, "product_id": f"sku-{mid}"}
    context = {"groupId": account}
    return event(
        "track",
        mid,
        minute,
        event="Order Completed",
        properties=properties,
        userId=user,
        context=context,
    )


class Worker:
    """A processor of users and accounts over one in-memory store, at a settable time."""

    def __init__(self) -> None:
        self.rules: RuleSet = load_rules(EXAMPLES / "rules.yaml", ENTITIES)
        self.store = MemoryProfileStore()
        self.dead_letters = ListDeadLetters()
        self.now_s = NOW_S
        self.processor = BatchProcessor(
            self.rules, self.store, self.dead_letters, clock=lambda: self.now_s, identities=ENTITIES
        )
        self.offset = 0
        self.sent: list[Record] = []

    async def send(self, *events: dict[str, Any]) -> BatchReport:
        records = []
        for value in events:
            records.append(Record(TOPIC, 0, self.offset, orjson.dumps(value), T0))
            self.offset += 1
        self.sent += records
        return await self.processor.process(records)

    async def view(self, entity: str, index: str, value: str) -> Any:
        raw = await self.store.read_view(entity, index, value)
        return None if raw is None else orjson.loads(raw)


async def test_a_user_s_events_also_build_their_account() -> None:
    worker = Worker()
    report = await worker.send(
        event(
            "group", "g-1", 0, userId="u-1", groupId="acme", traits={"name": "Acme", "plan": "pro"}
        ),
        event("identify", "i-1", 1, userId="u-1", traits={"email": "ada@acme.io", "name": "Ada"}),
        order("o-1", 2, 700.0, "u-1", "acme"),
        order("o-2", 3, 450.5, "u-2", "acme"),
        order("o-3", 4, 20.0, "u-2", "initech"),
    )
    assert (report.records, report.dead_lettered) == (5, 0)
    assert report.profiles_written == 4  # u-1, u-2, acme, initech

    acme = await worker.view("account", "account_id", "acme")
    assert acme["id"] == "acme"
    assert acme["entity"] == "account"
    assert acme["identities"] == {"account_id": ["acme"]}
    assert acme["attributes"] == {
        "account_revenue": 1150.5,
        "account_orders": 2,
        "active_users_30_days": 2,
        "key_account": True,
    }
    assert acme["traits"] == {"name": "Acme", "plan": "pro"}  # the group call's, not Ada's
    initech = await worker.view("account", "id", "initech")
    assert initech["attributes"]["account_revenue"] == 20.0
    assert initech["attributes"]["key_account"] is False

    ada = await worker.view("user", "user_id", "u-1")
    assert ada["traits"] == {"email": "ada@acme.io", "name": "Ada"}  # not the account's
    assert ada["attributes"]["lifetime_value"] == 700.0
    assert "account_revenue" not in ada["attributes"]
    u2 = await worker.view("user", "user_id", "u-2")
    assert u2["attributes"]["purchase_count"] == 2  # both accounts' orders are hers
    assert await worker.view("user", "account_id", "acme") is None  # no such user index


async def test_an_event_of_one_entity_alone_is_no_dead_letter() -> None:
    worker = Worker()
    report = await worker.send(event("group", "g-1", 0, groupId="acme", traits={"plan": "free"}))
    assert (report.dead_lettered, report.profiles_written) == (0, 1)
    assert (await worker.view("account", "id", "acme"))["traits"] == {"plan": "free"}
    assert worker.store.index == {("account", "account_id", "acme"): "acme"}


async def test_a_record_no_entity_claims_is_a_dead_letter() -> None:
    worker = Worker()
    report = await worker.send(event("track", "t-1", 0, event="Clicked", context={"ip": "x"}))
    assert report.dead_lettered == 1
    ((record, reason),) = worker.dead_letters.records
    assert record is worker.sent[0]
    assert reason == (
        "event carries no identity of any entity "
        "(user: user_id, email, anonymous_id; account: account_id)"
    )
    assert worker.store.states == {}


async def test_an_event_one_entity_cannot_apply_is_skipped_by_the_entities_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entities run in declared order: what breaks in `user` is a dead letter that
    `account` never sees, and the batch's other events go on in both."""
    worker = Worker()
    user = worker.processor.entities["user"]
    apply = EntityProcessor._apply

    def breaking(self: EntityProcessor, state: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        if any(orjson.loads(item.record.value)["messageId"] == "o-bad" for item in items):
            raise RuntimeError("a bug this event meets")
        return apply(self, state, items, *args, **kwargs)

    monkeypatch.setattr(user, "_apply", breaking.__get__(user))
    report = await worker.send(
        order("o-1", 0, 10.0, "u-1", "acme"), order("o-bad", 1, 99.0, "u-2", "acme")
    )
    assert report.dead_lettered == 1
    ((record, reason),) = worker.dead_letters.records
    assert record is worker.sent[1]
    assert reason.startswith("event could not be applied: RuntimeError")
    assert (await worker.view("user", "user_id", "u-1"))["attributes"]["lifetime_value"] == 10.0
    assert await worker.view("user", "user_id", "u-2") is None
    acme = await worker.view("account", "id", "acme")
    assert acme["attributes"]["account_revenue"] == 10.0  # without the dead letter's 99


async def test_replays_are_duplicates_for_every_entity_that_had_them() -> None:
    worker = Worker()
    await worker.send(order("o-1", 0, 10.0, "u-1", "acme"), event("page", "p-1", 1, userId="u-1"))
    before = dict(worker.store.states)
    again = await worker.processor.process(worker.sent)
    assert (again.duplicates, again.profiles_written) == (3, 0)  # 2 for u-1, 1 for acme
    assert worker.store.states == before


async def test_each_entity_s_windows_expire_without_new_events() -> None:
    worker = Worker()
    await worker.send(order("o-1", 0, 10.0, "u-1", "acme"))
    assert (await worker.view("account", "id", "acme"))["attributes"]["active_users_30_days"] == 1
    worker.now_s = NOW_S + 31 * DAY_S
    written = await worker.processor.expire(f"{TOPIC}/0", limit=100)
    assert written == 2  # u-1's windows and acme's
    acme = await worker.view("account", "id", "acme")
    assert acme["attributes"]["active_users_30_days"] == 0
    assert acme["attributes"]["account_revenue"] == 10.0  # all time: still there
    u1 = await worker.view("user", "user_id", "u-1")
    assert u1["attributes"]["orders_last_30_days"] == 0
