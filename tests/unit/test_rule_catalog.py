"""The rule file composed with the attributes made through the API
(`traitflow.rule_catalog`), and the catalog's versions, in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from attributes.catalog import ManagedAttribute, Status
from attributes.rules import RuleFileError
from traitflow.rule_catalog import Change, MemoryRuleCatalog, RuleSource

pytestmark = pytest.mark.anyio

RULES = """\
attributes:
  - name: spend
    function: sum
    field: properties.revenue
"""


@pytest.fixture
def source(tmp_path: Path) -> RuleSource:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return RuleSource.read(path)


def managed(name: str, status: Status = Status.ACTIVE, **more: object) -> ManagedAttribute:
    definition = {"name": name, "function": "count", **more}
    return ManagedAttribute(f"ca-{name}", status, definition, 1, 1)


def test_live_attributes_follow_the_file_s_and_may_read_them(source: RuleSource) -> None:
    rules = source.compose(
        [
            managed("orders", revision=2),
            managed("average", function="derived", expression="spend / double(orders)"),
            managed("later", Status.DRAFT),
        ]
    )
    assert rules.names == ("spend", "orders", "average")
    # an attribute's revision is its own: creation time (1) and revision (2)
    assert {a.key for a in rules.attributes} == {"spend/sum", "orders/count~10002"}


def test_a_problem_names_the_attribute_where_it_was_made(source: RuleSource) -> None:
    with pytest.raises(RuleFileError) as caught:
        source.compose([managed("spend"), managed("bad", where="properties.x +")])
    found = sorted(str(problem) for problem in caught.value.problems)
    assert found[0].startswith("ca/attributes/ca-bad: attribute 'bad': where:")
    assert found[1] == (
        "ca/attributes/ca-spend: attribute 'spend': duplicate name (first defined on line 2)"
    )


def test_a_draft_is_checked_as_if_it_were_live_and_a_disabled_one_not(
    source: RuleSource,
) -> None:
    with pytest.raises(RuleFileError):
        source.check([managed("bad", Status.DRAFT, where="nope(")])
    source.check([managed("bad", Status.DISABLED, where="nope(")])


async def test_each_change_is_a_new_version_and_stamps_the_attribute() -> None:
    catalog = MemoryRuleCatalog()
    first = await catalog.change(lambda _: Change(put=managed("a")))
    assert (first.version, first.attributes[0].version) == (1, 1)
    second = await catalog.change(lambda _: Change(put=managed("b")))
    assert [(a.name, a.version) for a in second.attributes] == [("a", 1), ("b", 2)]
    third = await catalog.change(lambda _: Change(drop="ca-a"))
    assert [a.name for a in third.attributes] == ["b"]
    assert await catalog.version() == 3


async def test_a_refused_edit_stores_nothing() -> None:
    catalog = MemoryRuleCatalog()

    def refuse(_: object) -> Change:
        raise RuleFileError([])

    with pytest.raises(RuleFileError):
        await catalog.change(refuse)
    assert await catalog.version() == 0
