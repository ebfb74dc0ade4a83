"""Creating, changing and deleting computed attributes, and how they are listed: one
core that the API (`api.computed_attributes`) and the CLI (`traitflow rules`) both
call, so that a change made from either is checked, refused and stored alike.

Each change is an edit of the catalog (`traitflow.rule_catalog.RuleCatalog.change`):
the lifecycle decides what it may do (`attributes.catalog`), then the attributes it
would leave are checked with the rule file as `traitflow validate` checks a file
(`RuleSource.check`). A refusal is a typed error, which each caller words its own way
(the API as a 400, 404 or 409; the CLI as a message and exit 2):

- `LifecycleError` (its `field`) and `RuleFileError` (its `problems`): the change;
- `UnknownAttribute`: no computed attribute has that id;
- `ConfiguredAttribute`: the id is a rule file attribute's (`file:name`), read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attributes.catalog import (
    LifecycleError,
    ManagedAttribute,
    Status,
    new_attribute,
    on_request,
    patched,
)
from attributes.catalog import requested as requested_status
from attributes.errors import InputError
from attributes.rules import RuleFileError
from attributes.ruleset import RuleSet
from traitflow.rule_catalog import Catalog, Change, RuleCatalog, RuleSource, new_id

#: the id prefix of a rule file attribute, as listed beside the managed ones
FILE_PREFIX = "file:"


class UnknownAttribute(InputError):
    """No computed attribute has this id (the API's 404)."""

    def __init__(self, attribute_id: str) -> None:
        self.attribute_id = attribute_id
        super().__init__(f"computed attribute {attribute_id!r} not found")


class ConfiguredAttribute(InputError):
    """The id names an attribute of the rule file: it is changed there, not here (the
    API's 409)."""

    def __init__(self, attribute_id: str) -> None:
        self.attribute_id = attribute_id
        super().__init__(
            f"{attribute_id.removeprefix(FILE_PREFIX)!r} is declared in the rule file "
            "(TRAITFLOW_RULES_PATH): change it there"
        )


#: what a change may be refused with (each caller words them its own way)
Refusal = RuleFileError | LifecycleError | UnknownAttribute | ConfiguredAttribute
REFUSALS = (RuleFileError, LifecycleError, UnknownAttribute, ConfiguredAttribute)


def described(attribute: ManagedAttribute) -> dict[str, Any]:
    """An attribute as the API serves it (Adobe's fields, and traitflow's)."""
    definition = dict(attribute.definition)
    return {
        "id": attribute.id,
        "name": attribute.name,
        "entity": attribute.entity,
        "description": definition.pop("description", ""),
        "status": attribute.status.value,
        "origin": "api",
        "definition": {k: v for k, v in definition.items() if k not in ("name", "entity")},
        "createEpoch": attribute.created_ms // 1000,
        "updateEpoch": attribute.updated_ms // 1000,
        "rulesVersion": attribute.version,
        "progress": dict(attribute.progress),
    }


def configured(rules: RuleSet) -> list[dict[str, Any]]:
    """The rule file's attributes, as the API lists them (always ACTIVE)."""
    listed = [
        {"name": a.name, "entity": a.entity, "description": a.description} for a in rules.attributes
    ]
    listed += [
        {"name": d.name, "entity": d.entity, "description": d.description} for d in rules.derived
    ]
    order = {name: i for i, name in enumerate(rules.names)}
    listed.sort(key=lambda a: order.get(a["name"], 0))
    return [
        {**a, "id": f"{FILE_PREFIX}{a['name']}", "status": Status.ACTIVE.value, "origin": "file"}
        for a in listed
    ]


def listed(
    source: RuleSource,
    catalog: Catalog,
    *,
    entity: str | None = None,
    status: Status | None = None,
) -> list[dict[str, Any]]:
    """The rule file's attributes, then those of `catalog`, of `entity` and `status`
    when given."""
    every = configured(source.compose(())) + [described(a) for a in catalog.attributes]
    return [
        a
        for a in every
        if (entity is None or a["entity"] == entity) and (status is None or a["status"] == status)
    ]


def found(catalog: Catalog, attribute_id: str, source: Callable[[], RuleSource]) -> dict[str, Any]:
    """The attribute with this id, described; UnknownAttribute if none has it. The
    rule file is asked for (`source`) only for a rule file attribute's id, so that a
    managed attribute can be read while the file cannot be used."""
    if attribute_id.startswith(FILE_PREFIX):
        for attribute in configured(source().compose(())):
            if attribute["id"] == attribute_id:
                return attribute
    elif (managed := catalog.get(attribute_id)) is not None:
        return described(managed)
    raise UnknownAttribute(attribute_id)


def editable(attribute_id: str) -> None:
    """Raise ConfiguredAttribute for a rule file attribute's id."""
    if attribute_id.startswith(FILE_PREFIX):
        raise ConfiguredAttribute(attribute_id)


def problem_text(exc: RuleFileError | LifecycleError) -> str:
    """A refused change in one line naming what is wrong: the field, or each problem
    (an attribute's own, without the `ca/attributes/...` place it would have had)."""
    if isinstance(exc, LifecycleError):
        return f"{exc.field}: {exc.problem}"
    return "; ".join(p.problem if p.name else str(p) for p in exc.problems)


async def create(
    catalog: RuleCatalog,
    source: RuleSource,
    body: Mapping[str, Any],
    *,
    now_ms: int,
    backfill: bool,
) -> ManagedAttribute:
    """Make an attribute from `body` (a rule as a rule file writes it, plus `status`:
    `DRAFT`, the default, or `ACTIVE`); the attribute as stored."""
    definition = {k: v for k, v in body.items() if k != "status"}
    attribute_id = new_id()  # once: the edit may run again

    def edit(current: Catalog) -> Change:
        status = on_request(None, requested_status(body.get("status", "DRAFT")), backfill=backfill)
        name = definition.get("name")
        if isinstance(name, str) and name in source.names:
            raise LifecycleError("name", f"{name!r} is an attribute of the rule file")
        made = new_attribute(attribute_id, definition, status, now_ms)
        source.check([*current.attributes, made])
        return Change(put=made)

    return _stored(await catalog.change(edit), attribute_id)


async def patch(
    catalog: RuleCatalog,
    source: RuleSource,
    attribute_id: str,
    changes: Mapping[str, Any],
    *,
    now_ms: int,
    backfill: bool,
) -> ManagedAttribute:
    """Apply `changes` (`attributes.catalog.PATCHABLE` fields) to an attribute; the
    attribute as stored. A change of what it counts is a new revision."""
    editable(attribute_id)

    def edit(current: Catalog) -> Change:
        attribute = current.get(attribute_id)
        if attribute is None:
            raise UnknownAttribute(attribute_id)
        changed = patched(attribute, changes, now_ms=now_ms, backfill=backfill)
        source.check([a if a.id != attribute_id else changed for a in current.attributes])
        return Change(put=changed)

    return _stored(await catalog.change(edit), attribute_id)


async def delete(catalog: RuleCatalog, source: RuleSource, attribute_id: str) -> Catalog:
    """Delete an attribute (refused while another one, or an audience, reads it); the
    catalog after. Workers stop computing it; each profile's state of it is dropped at
    its next write."""
    editable(attribute_id)

    def edit(current: Catalog) -> Change:
        if current.get(attribute_id) is None:
            raise UnknownAttribute(attribute_id)
        source.check([a for a in current.attributes if a.id != attribute_id])
        return Change(drop=attribute_id)

    return await catalog.change(edit)


def _stored(after: Catalog, attribute_id: str) -> ManagedAttribute:
    stored = after.get(attribute_id)
    assert stored is not None  # the change just put it
    return stored
