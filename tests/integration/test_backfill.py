"""Backfill with a real worker, broker and Redis: an attribute made while events flow
is computed over the topic's history and joined with its live values; every profile
ends equal to the batch answer over the whole topic, with no event counted twice."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from attributes.catalog import ManagedAttribute, Status, new_attribute
from streams.dry_run import dry_run
from tests.integration.conftest import wait_until
from tests.integration.workers import OwnWorker, alive, worker_log, worker_with_rules
from traitflow.config import Settings
from traitflow.rule_catalog import Catalog, Change, RedisRuleCatalog, RuleSource

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: purchase_count
    function: count
    event: Order Completed
"""
ORDERS_ALL = {"name": "orders_all", "function": "count", "event": "Order Completed"}


def catalog_call(settings: Settings, work: Any) -> Any:
    async def call() -> Any:
        catalog = RedisRuleCatalog.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await work(catalog)
        finally:
            await catalog.close()

    return asyncio.run(call())


def backfilled_while_events_flow(
    own: OwnWorker, redis_client: redis.Redis, run: str
) -> tuple[list[str], ManagedAttribute]:
    """Orders before, while and after an attribute counting them is made through the
    catalog; once it is ACTIVE, every user's count equals the batch answer over the
    whole topic (its purchase_count). The users and the attribute."""
    users = [f"{run}-u{n}" for n in range(16)]
    sent = dict.fromkeys(users, 0)

    def orders(batch: str, each: int) -> None:
        own.publish(
            [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "messageId": f"{run}-{batch}-{user}-{n}",
                }
                for n in range(each)
                for user in users
            ]
        )
        for user in users:
            sent[user] += each

    def view(user: str) -> Any:
        raw = redis_client.get(own.keys.view("user", user))
        return orjson.loads(raw) if raw else None

    def caught_up() -> bool:
        return all(
            (v := view(u)) is not None and v["attributes"]["purchase_count"] == sent[u]
            for u in users
        )

    orders("a", 3)
    wait_until(lambda: alive(own.worker) and caught_up(), timeout=60, what="history")

    made = new_attribute(f"ca-{uuid.uuid4().hex[:12]}", ORDERS_ALL, Status.PROCESSING, 1)

    def create(catalog: Catalog) -> Change:
        return Change(put=made)

    catalog_call(own.settings, lambda c: c.change(create))
    orders("b", 2)  # while the workers switch and the backfill runs

    def status() -> ManagedAttribute | None:
        snapshot = catalog_call(own.settings, lambda c: c.snapshot())
        found: ManagedAttribute | None = snapshot.get(made.id)
        return found if found is not None and found.status is Status.ACTIVE else None

    wait_until(
        lambda: alive(own.worker) and status(),
        timeout=90,
        what=f"the backfill to finish:\n{worker_log(own.worker)[-3000:]}",
    )
    orders("c", 1)  # after: live alone
    wait_until(caught_up, timeout=30, what="the last orders")
    deadline = time.monotonic() + 10
    for user in users:
        got = view(user)
        while got["attributes"].get("orders_all") != 6 and time.monotonic() < deadline:
            time.sleep(0.2)
            got = view(user)
        assert got["attributes"] == {"purchase_count": 6, "orders_all": 6}, user
    progress = orjson.loads(redis_client.hget(own.keys.backfill_progress(), made.id) or b"{}")
    assert progress["phase"] == "joining"
    assert progress["done"] == progress["total"] == len(users) + 1  # and the probe
    return users, made


def test_an_attribute_made_while_events_flow_is_backfilled_and_joined(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = f"tfbf-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(settings, tmp_path, RULES, run, topic_partitions=2) as own:
        users, made = backfilled_while_events_flow(own, redis_client, run)

        def view(user: str) -> Any:
            raw = redis_client.get(own.keys.view("user", user))
            return orjson.loads(raw) if raw else None

        assert "backfilled orders_all: ACTIVE" in worker_log(own.worker)

        # a dry run writes nothing: recomputing the ACTIVE one over the whole topic gives
        # what is served; a DRAFT's values to be are shown beside its absence
        source = RuleSource.read(own.settings.rules_path, own.settings.entities)
        again = asyncio.run(dry_run(own.settings, source, made.id, 5))
        assert len(again) == 5
        assert all(p.before == p.after == 6 for p in again if p.profile in users), again
        big = new_attribute(
            f"ca-{uuid.uuid4().hex[:12]}",
            {**ORDERS_ALL, "name": "orders_b", "where": "messageId.contains('-b-')"},
            Status.DRAFT,
            2,
        )
        catalog_call(own.settings, lambda c: c.change(lambda _: Change(put=big)))
        drafted = asyncio.run(dry_run(own.settings, source, big.id, 100))
        assert {p.profile: (p.before, p.after) for p in drafted if p.profile in users} == {
            user: (None, 2) for user in users
        }
        assert all("orders_b" not in view(user)["attributes"] for user in users)
        shown = subprocess.run(
            [sys.executable, "-m", "traitflow", "rules", "backfill", big.id, "--dry-run"],
            env=own.settings.child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        rows = [line.split() for line in shown.stdout.splitlines()[1:-1]]
        assert [row[1:] for row in rows if row[0] in users] == [["-", "2"]] * 9
        assert shown.stdout.splitlines()[-1] == "10 profiles, 10 would change; nothing was written"


def test_with_the_backfill_process_on_the_backfill_runs_beside_the_worker(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """TRAITFLOW_BACKFILL_PROCESS: `traitflow worker` supervises the worker and the
    backfill process; the join, committed from another process than the live worker's
    (whose cached states it makes stale), still counts every event once, and the
    backfill ran in the backfill process alone."""
    run = f"tfbp-{uuid.uuid4().hex[:8]}"
    with worker_with_rules(
        settings, tmp_path, RULES, run, topic_partitions=2, backfill_process=True
    ) as own:
        backfilled_while_events_flow(own, redis_client, run)
        log = worker_log(own.worker)
        found = re.search(r"backfill process started \(pid (\d+)\)", log)
        assert found is not None, log[-3000:]
        assert re.search(r"worker process 0 started \(pid \d+\)", log), log[-3000:]
        lines = [line for line in log.splitlines() if "orders_all" in line and "backfill" in line]
        assert any("backfilled orders_all: ACTIVE" in line for line in lines), log[-3000:]
        assert all(f"[{found[1]}]" in line and "backfills:" in line for line in lines), lines
