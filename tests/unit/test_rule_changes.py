"""The one core of computed-attribute changes (`traitflow.rule_changes`) that the API
and `traitflow rules` share: what it stores, and the typed refusals each caller words
its own way (nothing is stored on a refusal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attributes.catalog import LifecycleError, Status
from attributes.errors import InputError
from attributes.rules import RuleFileError
from traitflow import rule_changes
from traitflow.rule_catalog import MemoryRuleCatalog, RuleSource
from traitflow.rule_changes import ConfiguredAttribute, UnknownAttribute

pytestmark = pytest.mark.anyio

RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
    description: Total revenue.
"""
ORDERS = {"name": "orders", "function": "count", "event": "Order Completed"}


@pytest.fixture
def source(tmp_path: Path) -> RuleSource:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return RuleSource.read(path)


async def test_create_patch_delete_store_each_change_at_a_new_version(
    source: RuleSource,
) -> None:
    catalog = MemoryRuleCatalog()
    made = await rule_changes.create(catalog, source, ORDERS, now_ms=5_000, backfill=False)
    assert (made.status, made.created_ms, made.version) == (Status.DRAFT, 5_000, 1)
    assert made.definition == ORDERS  # `status` is not part of the definition
    changed = await rule_changes.patch(
        catalog,
        source,
        made.id,
        {"status": "ACTIVE", "where": "true"},
        now_ms=9_000,
        backfill=False,
    )
    assert (changed.status, changed.updated_ms, changed.version) == (Status.ACTIVE, 9_000, 2)
    assert changed.definition["revision"] == 1
    after = await rule_changes.delete(catalog, source, made.id)
    assert (after.version, after.attributes) == (3, ())


async def test_backfill_makes_an_activated_attribute_processing(source: RuleSource) -> None:
    catalog = MemoryRuleCatalog()
    body = {**ORDERS, "status": "ACTIVE"}
    made = await rule_changes.create(catalog, source, body, now_ms=1, backfill=True)
    assert made.status is Status.PROCESSING


async def test_refusals_are_typed_and_store_nothing(source: RuleSource) -> None:
    catalog = MemoryRuleCatalog()
    with pytest.raises(LifecycleError) as taken:
        await rule_changes.create(
            catalog, source, {**ORDERS, "name": "spend"}, now_ms=1, backfill=False
        )
    assert (
        rule_changes.problem_text(taken.value) == "name: 'spend' is an attribute of the rule file"
    )
    with pytest.raises(RuleFileError) as bad:
        await rule_changes.create(
            catalog, source, {**ORDERS, "where": "x +"}, now_ms=1, backfill=False
        )
    assert rule_changes.problem_text(bad.value).startswith("where: ")
    with pytest.raises(UnknownAttribute, match="computed attribute 'ca-000000000000' not found"):
        await rule_changes.patch(catalog, source, "ca-000000000000", {}, now_ms=1, backfill=False)
    with pytest.raises(UnknownAttribute):
        await rule_changes.delete(catalog, source, "ca-000000000000")
    with pytest.raises(ConfiguredAttribute, match="'spend' is declared in the rule file"):
        await rule_changes.delete(catalog, source, "file:spend")
    with pytest.raises(ConfiguredAttribute):
        await rule_changes.patch(catalog, source, "file:spend", {}, now_ms=1, backfill=False)
    assert catalog.catalog.version == 0
    assert issubclass(UnknownAttribute, InputError)
    assert issubclass(ConfiguredAttribute, InputError)


async def test_an_attribute_another_reads_cannot_be_deleted(source: RuleSource) -> None:
    catalog = MemoryRuleCatalog()
    base = await rule_changes.create(
        catalog, source, {**ORDERS, "status": "ACTIVE"}, now_ms=1, backfill=False
    )
    reader = {"name": "twice", "function": "derived", "expression": "orders * 2"}
    await rule_changes.create(catalog, source, reader, now_ms=2, backfill=False)
    with pytest.raises(RuleFileError) as refused:
        await rule_changes.delete(catalog, source, base.id)
    assert "orders" in rule_changes.problem_text(refused.value)
    assert catalog.catalog.version == 2


async def test_listing_and_finding_cover_the_file_and_the_catalog(source: RuleSource) -> None:
    catalog = MemoryRuleCatalog()
    made = await rule_changes.create(catalog, source, ORDERS, now_ms=1_500, backfill=False)
    snapshot = await catalog.snapshot()
    every = rule_changes.listed(source, snapshot)
    assert [(a["id"], a["status"], a["origin"]) for a in every] == [
        ("file:spend", "ACTIVE", "file"),
        (made.id, "DRAFT", "api"),
    ]
    assert rule_changes.listed(source, snapshot, status=Status.DRAFT) == [every[1]]
    assert rule_changes.listed(source, snapshot, entity="account") == []
    assert rule_changes.found(snapshot, "file:spend", lambda: source)["description"] == (
        "Total revenue."
    )
    shown = rule_changes.found(snapshot, made.id, lambda: pytest.fail("the file is not read"))
    assert (shown["createEpoch"], shown["definition"]) == (
        1,
        {"function": "count", "event": "Order Completed"},
    )
    with pytest.raises(UnknownAttribute):
        rule_changes.found(snapshot, "file:nothing", lambda: source)


async def test_a_live_attribute_cannot_read_a_draft(source: RuleSource) -> None:
    """A DRAFT is checked as if it were active, and the catalog is checked as the
    workers compose it too: an ACTIVE derived attribute over a DRAFT would compose in
    the first check alone, and no worker could switch to it (every commit waiting)."""
    catalog = MemoryRuleCatalog()
    await rule_changes.create(catalog, source, ORDERS, now_ms=1, backfill=False)  # a DRAFT
    reader = {"name": "twice", "function": "derived", "expression": "orders * 2"}
    with pytest.raises(RuleFileError) as refused:
        await rule_changes.create(
            catalog, source, {**reader, "status": "ACTIVE"}, now_ms=2, backfill=False
        )
    assert rule_changes.problem_text(refused.value).startswith("expression: unknown variable")
    assert "not computed while DRAFT: orders" in rule_changes.problem_text(refused.value)
    # as a DRAFT it is kept; activating it alone is refused, after the one it reads is not
    draft = await rule_changes.create(catalog, source, reader, now_ms=3, backfill=False)
    with pytest.raises(RuleFileError):
        await rule_changes.patch(
            catalog, source, draft.id, {"status": "ACTIVE"}, now_ms=4, backfill=False
        )
    orders = catalog.catalog.named("orders")
    assert orders is not None
    await rule_changes.patch(
        catalog, source, orders.id, {"status": "ACTIVE"}, now_ms=5, backfill=False
    )
    await rule_changes.patch(
        catalog, source, draft.id, {"status": "ACTIVE"}, now_ms=6, backfill=False
    )
    source.compose(catalog.catalog.attributes)  # what a worker switches to
