"""No attribute an API client can make stops a worker: attributes of every kind made,
changed and deleted through `POST/PATCH/DELETE /data/core/ca/attributes` against a
real API process and a real worker, while ordinary and hostile events flow, and
after each change a probe event must be applied within `PROBE_S`, the worker's
batches must not be retried for errors, and at the end no backfill may be left
running or failing.

Why: the product rule is that a worker cannot be stopped by its input, and attributes
are input too. Four ways through it were found this way: an ACTIVE derived
attribute reading a DRAFT one (accepted, and no worker could compose the catalog: every
commit waited), a filter of nested comprehensions (billions of steps on one event),
a windowed sum over doubles near the largest (every later event of the profile a
dead letter), and an ACTIVE derived attribute's backfill (failing at every tick, and
holding back every other backfill). The generated part is seeded: a failure names the seed and the
changes that led to it.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import create_key, wait_until
from tests.integration.dead_letter_support import sample, scrape
from tests.integration.workers import OwnWorker, alive, running_api, worker_log, worker_with_rules
from traitflow.config import Settings
from traitflow.services import free_port

pytestmark = pytest.mark.integration

PATH = "/data/core/ca/attributes"
RULES = """\
attributes:
  - name: seen
    function: count
  - name: revenue_7d
    function: sum
    field: properties.revenue
    lookback: {count: 7, unit: days}
"""
#: how long a probe event may take to be applied (a switch, a batch, under load)
PROBE_S = 30.0
#: generated changes (each followed by a probe), and the generator's seed: set
#: TF_LIVENESS_SEED and TF_LIVENESS_CHANGES to explore further than the regression run
CHANGES = int(os.environ.get("TF_LIVENESS_CHANGES", "30"))
SEED = int(os.environ.get("TF_LIVENESS_SEED", "7"))

HOUR_MS = 3_600_000
#: a list as long as an event under the size limit carries: nested comprehensions over
#: it are billions of steps
LONG_LIST = [0] * 60_000

FIELDS = [
    "properties.revenue",
    "properties.product",
    "properties.tags",
    "properties.items",
    "properties.nested.k",
    "properties.when",
    "traits.plan",
    "context.page.path",
    "timestamp",
    "event",
    "messageId",
]
WHERES = [
    "properties.revenue > 10.0",
    "has(properties.tags) && properties.tags.exists(t, t == 'a')",
    "properties.items.all(a, properties.items.all(b, a == b))",
    "properties.items.map(a, properties.items.map(b, a)).size() > 0",
    "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9].all(a, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].all(b, "
    "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9].all(c, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].all(d, "
    "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9].all(e, a + b + c + d + e >= 0)))))",
    "properties.product.matches('^(a+)+$')",
    "string(properties.revenue).size() > 0",
    "timestamp(properties.when) > timestamp('2020-01-01T00:00:00Z')",
    "int(properties.revenue) % 2 == 0",
    "properties.nested.k / 0 == 1",
]
EXPRESSIONS = [
    "{name} * 2",
    "double({name}) / 0.0",
    "{name} == null ? 0 : 1",
    "now - timestamp('2020-01-01T00:00:00Z') > duration('1h')",
    "size(string({name})) > 0",
    "[{name}, {name}].map(x, [x, x, x])",
]
NAMES = ["_", "x" * 64, "A_1", "properties", "timestamp", "size", "event", "type"]
UNITS = {"minutes": 1440, "hours": 720, "days": 366, "weeks": 104, "months": 36}


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[tuple[OwnWorker, httpx.Client]]:
    """A worker (backfill on: activated attributes are backfilled) and an API process
    on keys and topics of their own."""
    run = f"tflive-{uuid.uuid4().hex[:8]}"
    with (
        worker_with_rules(settings, tmp_path, RULES, run, worker_metrics_port=free_port()) as own,
        running_api(own.settings, "api") as url,
    ):
        token = create_key(own.settings, "liveness", admin=True)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as api:
            yield own, api


class Liveness:
    """Probes a worker: each probe is an event for a new profile, applied in time."""

    def __init__(self, own: OwnWorker, client: redis.Redis) -> None:
        self.own = own
        self.client = client
        self.probes = 0
        self.changes: list[str] = []

    def view(self, user: str) -> Any:
        raw = self.client.get(self.own.keys.view("user", user))
        return orjson.loads(raw) if raw else None

    def note(self, what: str, answer: httpx.Response) -> httpx.Response:
        self.changes.append(f"{what} -> {answer.status_code} {answer.text[:200]}")
        assert answer.status_code < 500, self.changes[-1]
        return answer

    def check(self) -> None:
        """A probe is applied within PROBE_S, and no batch was retried for an error."""
        self.probes += 1
        user = f"probe-{self.probes}-{uuid.uuid4().hex[:6]}"
        self.own.publish([{"type": "identify", "userId": user, "traits": {"n": self.probes}}])
        began = time.monotonic()
        while self.view(user) is None:
            alive(self.own.worker)
            if time.monotonic() - began > PROBE_S:
                log = worker_log(self.own.worker)[-4000:]
                recent = "\n".join(self.changes[-5:])
                pytest.fail(f"probe {self.probes} not applied within {PROBE_S:.0f} s after "
                            f"(seed {SEED}):\n{recent}\nworker log:\n{log}")  # fmt: skip
            time.sleep(0.05)
        retried = sample(scrape(self.own.settings), "traitflow_batch_retries_total", reason="error")
        assert retried == 0, f"batches retried for errors after:\n{self.changes[-5:]}"


@pytest.fixture
def liveness(stack: tuple[OwnWorker, httpx.Client], redis_client: redis.Redis) -> Liveness:
    return Liveness(stack[0], redis_client)


def hostile_events(user: str, now_ms: int) -> list[dict[str, Any]]:
    """Events valid for the worker that the attributes above find hard."""
    base = {"type": "track", "event": "Order Completed", "userId": user}
    return [
        {**base, "properties": {"items": LONG_LIST, "revenue": 1.0}},
        {**base, "properties": {"product": "a" * 5000 + "!", "tags": ["a"] * 1000}},
        {**base, "properties": {"revenue": 1.7e308, "when": "9999-12-31T23:59:59Z"}},
        {**base, "properties": {"revenue": -1.7e308, "nested": {"k": 0}, "when": 253402300799999}},
        {**base, "timestamp": "1970-01-01T00:00:00Z", "properties": {"revenue": 2**63 - 1}},
        {**base, "properties": {"revenue": "12", "tags": "a", "items": {"a": 1}}},
        {"type": "identify", "userId": user, "traits": {"plan": ["x"] * 100}},
        {"type": "page", "userId": user, "context": {"page": {"path": None}}, "name": "p",
         "timestamp": _iso(now_ms - 30 * 86_400_000)},
    ]  # fmt: skip


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ms / 1000))


def test_an_active_attribute_over_a_draft_is_refused_and_the_worker_goes_on(
    stack: tuple[OwnWorker, httpx.Client], liveness: Liveness
) -> None:
    _, api = stack
    liveness.check()
    draft = liveness.note("draft", api.post(PATH, json={"name": "orders", "function": "count"}))
    assert draft.json()["status"] == "DRAFT"
    reader = {"name": "twice", "function": "derived", "expression": "orders * 2"}
    answer = liveness.note("reader", api.post(PATH, json={**reader, "status": "ACTIVE"}))
    liveness.check()
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("expression: unknown variable 'orders'")


def test_a_filter_of_nested_comprehensions_does_not_stall_the_worker(
    stack: tuple[OwnWorker, httpx.Client], liveness: Liveness
) -> None:
    """Without a budget, the one event below is 3.6 billion steps of the filter."""
    own, api = stack
    made = api.post(
        PATH,
        json={
            "name": "pairs",
            "function": "count",
            "where": "properties.items.all(a, properties.items.all(b, a == b))",
            "status": "ACTIVE",
        },
    )
    assert liveness.note("pairs", made).status_code == 201
    liveness.check()  # switched
    user = f"hostile-{uuid.uuid4().hex[:6]}"
    own.publish(
        [{"type": "track", "event": "E", "userId": user, "properties": {"items": LONG_LIST}}]
    )
    liveness.check()
    wait_until(lambda: liveness.view(user), timeout=PROBE_S, what="the hostile event applied")
    assert liveness.view(user)["attributes"]["seen"] == 1


def test_a_windowed_sum_past_a_double_s_range_keeps_its_profile_applying_events(
    stack: tuple[OwnWorker, httpx.Client], liveness: Liveness
) -> None:
    """Two buckets of 1e308 each: their total's render raised at every later event of
    the profile, each then a dead letter."""
    own, _ = stack
    user = f"huge-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    for hours_ago in (2, 1, 0):
        own.publish(
            [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": user,
                    "timestamp": _iso(now - hours_ago * HOUR_MS),
                    "properties": {"revenue": 1e308},
                }
            ]
        )
    wait_until(
        lambda: (view := liveness.view(user)) is not None and view["attributes"]["seen"] == 3,
        timeout=PROBE_S,
        what="all three events applied",
    )
    assert liveness.view(user)["attributes"]["revenue_7d"] is None  # infinite: null in JSON
    liveness.check()


def test_an_active_derived_attribute_and_those_made_after_it_are_backfilled(
    stack: tuple[OwnWorker, httpx.Client], liveness: Liveness
) -> None:
    """A derived attribute made ACTIVE is PROCESSING first, as any: its backfill
    compiled it alone, where what it reads is missing, failed at every tick, and held
    back every backfill after it."""
    _, api = stack
    derived = {"name": "twice", "function": "derived", "expression": "seen * 2"}
    made = [liveness.note("derived", api.post(PATH, json={**derived, "status": "ACTIVE"}))]
    after = {"name": "orders", "function": "count", "status": "ACTIVE"}
    made.append(liveness.note("after", api.post(PATH, json=after)))
    assert [m.json()["status"] for m in made] == ["PROCESSING", "PROCESSING"]

    def statuses() -> list[str]:
        return [api.get(f"{PATH}/{m.json()['id']}").json()["status"] for m in made]

    wait_until(lambda: statuses() == ["ACTIVE", "ACTIVE"], timeout=PROBE_S, what="both ACTIVE")
    liveness.check()


def test_generated_attributes_made_changed_and_deleted_never_stop_the_worker(
    stack: tuple[OwnWorker, httpx.Client], liveness: Liveness
) -> None:
    own, api = stack
    rng = random.Random(SEED)
    made: list[dict[str, Any]] = []  # id and name of each stored attribute
    liveness.check()
    for step in range(CHANGES):
        action = rng.random()
        if action < 0.65 or not made:
            body = generated(rng, step, [a["name"] for a in made])
            answer = liveness.note(f"POST {body}", api.post(PATH, json=body))
            if answer.status_code == 201:
                made.append(answer.json())
        elif action < 0.9:
            target = rng.choice(made)
            patch = patched(rng, target)
            answer = liveness.note(f"PATCH {target['name']} {patch}", api.patch(
                f"{PATH}/{target['id']}", json=patch))  # fmt: skip
        else:
            target = rng.choice(made)
            answer = liveness.note(f"DELETE {target['name']}", api.delete(f"{PATH}/{target['id']}"))
            if answer.status_code == 204:
                made.remove(target)
        if step % 5 == 0:
            user = f"h{step}-{uuid.uuid4().hex[:6]}"
            own.publish(hostile_events(user, int(time.time() * 1000)))
        liveness.check()

    deadline = time.monotonic() + 120
    while processing := api.get(PATH, params={"status": "PROCESSING"}).json()["computedAttributes"]:
        if time.monotonic() > deadline:
            log = worker_log(own.worker)[-6000:]
            pytest.fail(f"backfills not finished (seed {SEED}): {processing}\nlog:\n{log}")
        time.sleep(0.5)
    assert "failed; it is tried again" not in worker_log(own.worker)
    assert any(a["status"] == "ACTIVE" for a in api.get(PATH).json()["computedAttributes"])
    liveness.check()


def generated(rng: random.Random, step: int, names: list[str]) -> dict[str, Any]:
    """An attribute body as an API client may write one: most are valid, some not."""
    name = rng.choice([*NAMES, f"a{step}", f"a{step}", f"a{step}"])
    function = rng.choice(
        ["sum", "count", "min", "max", "avg", "most_recent", "first", "list",
         "unique_count", "most_frequent", "derived", "derived"]
    )  # fmt: skip
    body: dict[str, Any] = {"name": name, "function": function}
    body["status"] = rng.choice(["DRAFT", "ACTIVE", "ACTIVE"])
    if rng.random() < 0.2:
        body["description"] = "é" * rng.randint(0, 300)
    if function == "derived":
        read = rng.choice([*names, "seen", "revenue_7d"])
        body["expression"] = rng.choice(EXPRESSIONS).format(name=read)
        return body
    if function not in ("count",) or rng.random() < 0.3:
        body["field"] = rng.choice(FIELDS)
    if rng.random() < 0.3:
        body["event"] = rng.choice(["Order Completed", ["Order Completed", "E"], ""])
    if rng.random() < 0.2:
        body["type"] = rng.sample(["track", "identify", "page"], rng.randint(1, 2))
    if rng.random() < 0.5:
        body["where"] = rng.choice(WHERES)
    if rng.random() < 0.5:
        body["lookback"] = span(rng)
        if rng.random() < 0.3:
            body["calendar"] = True
        if rng.random() < 0.3:
            body["allowed_lateness"] = span(rng, months=False)
    if function == "list":
        body["size"] = rng.choice([1, 1000])
        body["distinct"] = rng.random() < 0.5
    if function in ("unique_count", "most_frequent") and rng.random() < 0.5:
        body["max_values"] = rng.choice([1, 10_000])
    if function in ("most_recent", "first", "min", "max") and rng.random() < 0.4:
        body["as"] = "timestamp"
    return body


def patched(rng: random.Random, target: dict[str, Any]) -> dict[str, Any]:
    """A PATCH body: a status, a condition, a window, or a removal."""
    choice = rng.randrange(5)
    if choice == 0:
        return {"status": rng.choice(["ACTIVE", "DISABLED", "DRAFT"])}
    if choice == 1:
        key = "expression" if target["definition"].get("function") == "derived" else "where"
        value = rng.choice(WHERES) if key == "where" else "seen + 1"
        return {key: value}
    if choice == 2:
        return {"lookback": span(rng)}
    if choice == 3:
        return {"where": None, "lookback": None, "status": "ACTIVE"}
    return {"description": "changed", "event": rng.choice(["E", None])}


def span(rng: random.Random, *, months: bool = True) -> dict[str, Any]:
    unit = rng.choice([u for u in UNITS if months or u != "months"])
    return {"count": rng.choice([1, UNITS[unit]]), "unit": unit}
