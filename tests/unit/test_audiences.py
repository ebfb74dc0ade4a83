"""Audiences: the rule file's `audiences:` section, membership, enter/exit, sizes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from attributes.audiences import AudienceSpec, compile_audience, membership_change
from attributes.events import decode_event
from attributes.expressions import INT
from attributes.paths import compile_path
from attributes.policies import DEFAULT_POLICY
from attributes.profile import ProfileState, apply_event, decode_state
from attributes.rules import RuleFileError, RuleProblem, parse_rules
from attributes.ruleset import CompiledAttribute, RuleSet
from attributes.specs import AttributeSpec
from streams.processor import BatchProcessor, ListDeadLetters, Record
from streams.rendering import ViewRenderer
from tests.unit.conftest import ROOT
from tests.unit.test_processor import Fragile, Pipeline, poke, records
from tests.unit.trust_support import trusting
from traitflow.cli import app
from traitflow.memory_store import MemoryProfileStore
from traitflow.state_cache import CachedProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

FILE = "rules.yaml"
HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_794_394_800_000  # 2026-11-11T11:00:00Z

ATTRIBUTES = """\
attributes:
  - name: orders_7d
    function: count
    event: Order
    lookback: {count: 7, unit: days}
  - name: spend
    function: sum
    field: properties.revenue
    event: Order
  - name: average
    function: derived
    expression: spend / double(orders_7d)
"""

RULES = parse_rules(
    ATTRIBUTES
    + """\
audiences:
  - name: recent_buyers
    description: Ordered in the last 7 days.
    condition: orders_7d > 0
  - name: big_pro
    condition: spend >= 100.0 && traits.plan == "pro"
  - name: high_average
    condition: average > 50.0
""",
    FILE,
)


def problems(audiences: str, entities: list[str] | None = None) -> list[RuleProblem]:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(ATTRIBUTES + "audiences:\n" + audiences, FILE, entities)
    return caught.value.problems


# --- the rule file ----------------------------------------------------------------------


def test_audiences_are_compiled_in_file_order() -> None:
    assert [a.name for a in RULES.audiences] == ["recent_buyers", "big_pro", "high_average"]
    assert RULES.audiences[0].description == "Ordered in the last 7 days."
    assert RULES.of("user").membership.names == ["recent_buyers", "big_pro", "high_average"]


def test_a_rule_file_without_audiences_has_none() -> None:
    rules = parse_rules(ATTRIBUTES, FILE)
    assert rules.audiences == ()
    assert rules.membership.names == []


@pytest.mark.parametrize(
    ("audiences", "line", "name", "wrong"),
    [
        ("  - name: a\n    condition: orders_7d + 'x'\n", 14, "a", "condition: no matching"),
        ("  - name: a\n    condition: spend\n", 14, "a", "condition: expected a bool"),
        ("  - name: a\n    condition: nobody > 1\n", 14, "a", "condition: "),
        ("  - name: 9a\n    condition: 'true'\n", 14, "9a", "name: must be an identifier"),
        ("  - name: a\n", 14, "a", "condition: Field required"),
        ("  - name: a\n    condition: 'true'\n    where: x\n", 14, "a", "where: Extra inputs"),
        ("  - name: a\n    entity: shop\n    condition: 'true'\n", 14, "a", "entity 'shop'"),
    ],
)
def test_a_bad_audience_is_reported_with_file_line_and_name(
    audiences: str, line: int, name: str, wrong: str
) -> None:
    (problem,) = problems(audiences, ["user", "account"])
    assert (problem.file, problem.line, problem.name, problem.kind) == (
        FILE,
        line,
        name,
        "audience",
    )
    assert problem.problem.startswith(wrong), problem.problem
    assert str(problem).startswith(f"{FILE}:{line}: audience {name!r}: ")


def test_a_duplicate_audience_names_its_first_line() -> None:
    (problem,) = problems(
        "  - name: a\n    condition: 'true'\n  - name: a\n    condition: 'false'\n"
    )
    assert (problem.line, problem.name) == (16, "a")
    assert problem.problem == "duplicate audience (first defined on line 14)"


def test_audiences_that_are_not_a_list_are_a_problem() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(ATTRIBUTES + "audiences: 5\n", FILE)
    (problem,) = caught.value.problems
    assert problem.line == 13
    assert problem.kind == "audience"


def test_every_bad_audience_is_reported_with_the_attributes_problems() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(
            ATTRIBUTES.replace("function: sum", "function: summ")
            + "audiences:\n  - name: a\n    condition: 1\n  - name: b\n    condition: 'true'\n",
            FILE,
        )
    found = [(p.line, p.kind, p.name) for p in caught.value.problems]
    assert found == [(6, "attribute", "spend"), (10, "attribute", "average"), (14, "audience", "a")]


def test_a_condition_reads_only_its_own_entitys_attributes() -> None:
    text = (
        ATTRIBUTES
        + "  - name: seats\n    entity: account\n    function: count\n    event: Seat\n"
        + "audiences:\n  - name: a\n    entity: account\n    condition: orders_7d > 0\n"
    )
    with pytest.raises(RuleFileError, match="audience 'a': condition: "):
        parse_rules(text, FILE)
    rules = parse_rules(text.replace("orders_7d > 0", "seats > 0"), FILE)
    assert rules.of("account").membership.names == ["a"]
    assert rules.of("user").membership.names == []


# --- membership ---------------------------------------------------------------------------


def test_membership_reads_attributes_as_their_cel_types_and_the_traits() -> None:
    membership = RULES.membership
    values = {"orders_7d": 2, "spend": 120, "average": 60.0}  # an int sum is a double
    assert membership.membership(values, {"plan": "pro"}) == {
        "recent_buyers": True,
        "big_pro": True,
        "high_average": True,
    }
    assert membership.membership(values, {"plan": "free"})["big_pro"] is False


def test_a_condition_that_fails_is_not_a_membership() -> None:
    values = {"orders_7d": 0, "spend": 0, "average": None}  # null > 50.0: an error
    assert RULES.membership.membership(values, {}) == {
        "recent_buyers": False,
        "big_pro": False,  # no trait `plan`
        "high_average": False,
    }


def test_membership_change_names_entries_and_exits() -> None:
    assert membership_change([], {"a": True, "b": False}) == (["a"], [])
    assert membership_change(["a", "b"], {"a": True, "b": False}) == ([], ["b"])
    assert membership_change(["gone"], {"a": False}) == ([], ["gone"])  # no longer declared


# --- the write: membership in the view and the state, left on time -----------------------


def order(state: ProfileState, offset: int, at: int, revenue: float) -> None:
    event = decode_event(
        orjson.dumps(
            {"type": "track", "event": "Order", "userId": "u", "properties": {"revenue": revenue}}
        )
    )
    apply_event(state, event, ts=at, rules=RULES, source="e/0", offset=offset, now=at)


def served(write: ProfileWrite) -> Any:
    assert write.view is not None
    return orjson.loads(write.view)["_audiences"]


def test_a_profile_enters_by_an_event_and_leaves_on_time() -> None:
    views = ViewRenderer(rules=RULES, policy=DEFAULT_POLICY)
    state = ProfileState(id="u")
    order(state, 0, NOW, 80.0)
    write = views.write(state, "e/0", touched={"orders_7d", "spend"}, now=NOW)
    assert served(write) == {"recent_buyers": True, "big_pro": False, "high_average": True}
    assert (write.entered, write.exited) == (["recent_buyers", "high_average"], [])
    assert decode_state(write.encoded_state).audiences == ["recent_buyers", "high_average"]

    # the same state re-rendered with nothing changed: no entry or exit again
    again = views.write(state, "e/0", touched=set(), now=NOW + HOUR)
    assert (again.entered, again.exited) == ([], [])

    # eight days on, no event: the window is empty, both audiences are left
    later = NOW + 8 * DAY
    left = views.write(state, "e/0", touched=set(), now=later)
    assert served(left) == {"recent_buyers": False, "big_pro": False, "high_average": False}
    assert (left.entered, left.exited) == ([], ["recent_buyers", "high_average"])
    assert decode_state(left.encoded_state).audiences == []


def test_a_deleted_profile_exits_every_audience() -> None:
    views = ViewRenderer(rules=RULES, policy=DEFAULT_POLICY)
    state = ProfileState(id="u", audiences=["recent_buyers"], deleted=True)
    write = views.write(state, "e/0", touched=set(), now=NOW)
    assert write.view is None
    assert write.exited == ["recent_buyers"]
    assert state.audiences == []


def test_rules_without_audiences_serve_no_audiences_key() -> None:
    rules = parse_rules(ATTRIBUTES, FILE)
    write = ViewRenderer(rules=rules, policy=DEFAULT_POLICY).write(
        ProfileState(id="u"), "e/0", touched=set(), now=NOW
    )
    assert write.view is not None
    assert "_audiences" not in orjson.loads(write.view)


# --- the processor: sizes kept by the commits ----------------------------------------------


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def event(offset: int, at: int, **body: Any) -> Record:
    return Record("events", 0, offset, orjson.dumps({"messageId": f"m{offset}", **body}), at)


def buy(offset: int, user: str, at: int, revenue: float = 10.0, **ids: str) -> Record:
    return event(
        offset,
        at,
        type="track",
        event="Order",
        userId=user,
        properties={"revenue": revenue},
        **ids,
    )


@pytest.fixture(params=["memory", "cached"])
def world(request: pytest.FixtureRequest) -> tuple[BatchProcessor, MemoryProfileStore, Clock]:
    store, clock = MemoryProfileStore(), Clock(NOW)
    front = store if request.param == "memory" else CachedProfileStore(store, 100)
    return (
        BatchProcessor(RULES, front, ListDeadLetters(), clock=clock, trust=trusting("events")),
        store,
        clock,
    )


async def test_sizes_follow_entries_exits_and_replays(world: Any) -> None:
    processor, store, clock = world
    batch = [buy(0, "u-1", NOW - HOUR), buy(1, "u-2", NOW - 6 * DAY, 200.0)]
    await processor.process(batch)
    assert await store.audience_sizes("user") == {"recent_buyers": 2, "high_average": 1}
    await processor.process(batch)  # a replay changes nothing
    assert await store.audience_sizes("user") == {"recent_buyers": 2, "high_average": 1}
    identify = event(2, NOW, type="identify", userId="u-2", traits={"plan": "pro"})
    await processor.process([identify])
    assert (await store.audience_sizes("user"))["big_pro"] == 1

    clock.ms = NOW + 2 * DAY  # u-2's order leaves its window; u-1's does not
    await processor.expire("events/0", 100)
    assert await store.audience_sizes("user") == {
        "recent_buyers": 1,
        "high_average": 0,
        "big_pro": 1,
    }
    view = await store.read_view("user", "id", "u-2")
    assert view is not None
    assert orjson.loads(view)["_audiences"] == {
        "recent_buyers": False,
        "big_pro": True,
        "high_average": False,
    }


async def test_a_merged_away_profile_leaves_the_sizes(world: Any) -> None:
    processor, store, _ = world
    await processor.process(
        [
            event(0, NOW, type="track", event="Order", anonymousId="a-1", properties={}),
            buy(1, "u-1", NOW),
        ]
    )
    assert (await store.audience_sizes("user"))["recent_buyers"] == 2
    # one event names both: the anonymous profile merges into the user's
    await processor.process([event(2, NOW, type="page", userId="u-1", anonymousId="a-1")])
    assert (await store.audience_sizes("user"))["recent_buyers"] == 1
    assert len(store.views) == 1


# --- the README's example ---------------------------------------------------------------------


async def test_the_readme_s_audiences_serve_as_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "audiences:" in b]
    rules = parse_rules(block, "README.md")
    store, clock = MemoryProfileStore(), Clock(NOW)
    processor = BatchProcessor(
        rules, store, ListDeadLetters(), clock=clock, trust=trusting("events")
    )
    order = {"type": "track", "event": "Order Completed", "properties": {"revenue": 600.0}}
    await processor.process(
        [
            event(0, NOW - DAY, userId="u-1", **order),
            event(1, NOW, type="identify", userId="u-1", traits={"plan": "pro"}),
            event(2, NOW - DAY, userId="u-2", **order),
        ]
    )
    views = [orjson.loads(store.views[("user", u)]) for u in ("u-1", "u-2")]
    assert [v["_audiences"] for v in views] == [
        {"recent_buyers": True, "pro_big_spenders": True},
        {"recent_buyers": True, "pro_big_spenders": False},
    ]
    clock.ms = NOW + 7 * DAY
    await processor.expire("events/0", 100)
    assert await store.audience_sizes("user") == {"recent_buyers": 0, "pro_big_spenders": 1}


async def test_the_slow_path_counts_an_entry_once() -> None:
    """An event that breaks is dead-lettered (the profile's events are applied one by
    one, then again without it): the entry is counted once."""
    spec = AttributeSpec(name="fragile", function="count", field="properties.x")
    compiled = CompiledAttribute("fragile", "user", Fragile(), compile_path("properties.x"))
    audience = compile_audience(
        AudienceSpec(name="poked", condition="fragile >= 1"), {"fragile": INT}
    )
    pipeline = Pipeline(RuleSet.build([(spec, compiled)], audiences=[audience]))
    await pipeline.process(records([poke("u-1", 1), poke("u-1", "boom"), poke("u-1", 2)]))
    assert [offset for offset, _ in pipeline.reasons] == [1]
    assert (await pipeline.view("id", "u-1"))["_audiences"] == {"poked": True}
    assert await pipeline.store.audience_sizes("user") == {"poked": 1}


# --- `traitflow validate` -------------------------------------------------------------------


def test_validate_counts_audiences_and_reports_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(ATTRIBUTES + "audiences:\n  - name: a\n    condition: spend > 1.0\n")
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "3 attributes OK: user 3 (1 windowed, 1 derived), 1 audiences" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(ATTRIBUTES + "audiences:\n  - name: a\n    condition: spend + 1.0\n")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:14: audience 'a': condition: expected a bool expression" in result.output
