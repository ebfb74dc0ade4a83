"""The peer benchmark's job: the events it sends and the totals it checks both systems
against are made together, so a wrong total would fail traitflow and Quix alike."""

from __future__ import annotations

import orjson

from bench.peers import Totals, make_job, wrong_values


def test_the_totals_are_the_sum_of_the_events_sent() -> None:
    job = make_job(2_000, 50, seed=1)
    events = [orjson.loads(value) for _, value in job.events]
    assert len(events) == 2_000
    assert {e["event"] for e in events} == {"Order Completed", "Product Viewed"}
    assert 0.3 < sum(e["event"] == "Order Completed" for e in events) / 2_000 < 0.5
    for user, totals in job.totals.items():
        mine = [e for e in events if e["userId"] == user]
        orders = [e for e in mine if e["event"] == "Order Completed"]
        assert totals.events == len(mine)
        assert totals.orders == len(orders)
        assert totals.views == len(mine) - len(orders)
        assert totals.revenue_cents == round(sum(e["properties"]["revenue"] * 100 for e in orders))
        latest = max(mine, key=lambda e: e["timestamp"])
        assert totals.last_category == latest["properties"]["category"]
    # as SDKs send them: keyed by user, with the anonymous id too, each messageId once
    assert all(key.decode() == orjson.loads(value)["userId"] for key, value in job.events)
    assert all(e["anonymousId"] == f"anon-{e['userId']}" for e in events)
    assert len({e["messageId"] for e in events}) == 2_000


def test_a_value_is_wrong_unless_all_four_match() -> None:
    expected = Totals(events=3, revenue_cents=1050, orders=1, views=2, last_category="toys")
    right = {"revenue_sum": 10.5, "orders": 1, "views": 2, "last_category": "toys"}
    assert not wrong_values(right, expected)
    assert wrong_values(None, expected)
    for key, other in [("revenue_sum", 10.49), ("orders", 2), ("views", 1), ("last_category", "x")]:
        assert wrong_values(right | {key: other}, expected), key
