"""Computed attributes made through the API (Adobe's `ca/attributes`), and their
lifecycle: what a change may do, checked before anything is stored.

An attribute made this way is a rule like the rule file's (its `definition` is an
`AttributeSpec`'s fields), plus an id, a status and times. Only the live ones
(`PROCESSING`, `ACTIVE`) are computed by the workers; a `DRAFT` is kept and checked
but not computed, a `DISABLED` one is neither (its state is dropped at each profile's
next write: `attributes.profile.reconcile`). The rule file's attributes are listed
beside them, read-only, as configured merge policies are.

A change of what an attribute counts (its condition, event, function or window)
gives it a new `revision`, part of its state key: no state mixes events counted
under two definitions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from attributes.errors import RuleError
from attributes.profile import ProfileState
from attributes.ruleset import CompiledAttribute


class Status(enum.StrEnum):
    DRAFT = "DRAFT"
    PROCESSING = "PROCESSING"
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"


#: the statuses whose attributes the workers compute
LIVE = frozenset({Status.PROCESSING, Status.ACTIVE})
#: what a user may ask a status to become (PROCESSING is the system's: a backfill)
REQUESTABLE = frozenset({Status.DRAFT, Status.ACTIVE, Status.DISABLED})
#: the definition fields a PATCH may change (Adobe's: description, condition,
#: window; and the status); the name, entity and function make another attribute
PATCHABLE = frozenset({"description", "where", "expression", "lookback", "event", "status"})
#: the fields whose change changes what is counted: a new revision
COUNTING = frozenset({"where", "expression", "lookback", "event"})


class LifecycleError(RuleError):
    """A change the lifecycle does not allow; `field` names what was wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True, slots=True)
class ManagedAttribute:
    id: str
    status: Status
    #: the rule's fields, as in a rule file (`attributes.specs.AttributeSpec`)
    definition: Mapping[str, Any]
    created_ms: int
    updated_ms: int
    #: the rules version that made its current definition and status
    version: int = 0
    #: what its backfill has done, while PROCESSING (`attributes` are not told)
    progress: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    @property
    def entity(self) -> str:
        return str(self.definition.get("entity", "user"))

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "definition": dict(self.definition),
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "version": self.version,
            "progress": dict(self.progress),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManagedAttribute:
        return cls(
            id=str(data["id"]),
            status=Status(data["status"]),
            definition=dict(data["definition"]),
            created_ms=int(data["created_ms"]),
            updated_ms=int(data["updated_ms"]),
            version=int(data.get("version", 0)),
            progress=dict(data.get("progress") or {}),
        )


def requested(status: Any) -> Status:
    """A status a user asked for; LifecycleError if it is none they may ask for."""
    allowed = ", ".join(sorted(REQUESTABLE))
    if not isinstance(status, str) or status not in REQUESTABLE:
        raise LifecycleError("status", f"must be one of {allowed}")
    return Status(status)


def on_request(current: Status | None, wanted: Status, *, backfill: bool) -> Status:
    """The status an attribute gets when a user asks for `wanted` (`current`: None for a
    new one). Activating makes it PROCESSING when its history is to be backfilled."""
    if wanted is Status.DRAFT and current not in (None, Status.DRAFT):
        raise LifecycleError("status", f"a {current} attribute cannot go back to DRAFT")
    if wanted is Status.ACTIVE:
        if current in LIVE:
            return current
        return Status.PROCESSING if backfill else Status.ACTIVE
    return wanted


def patched(
    attribute: ManagedAttribute, patch: Mapping[str, Any], *, now_ms: int, backfill: bool
) -> ManagedAttribute:
    """`attribute` with `patch` applied (LifecycleError naming the field if it may not
    be). A change of what it counts gives it a new revision, and a live one is
    computed again (PROCESSING, when backfilled)."""
    unknown = sorted(set(patch) - PATCHABLE)
    if unknown:
        allowed = ", ".join(sorted(PATCHABLE))
        raise LifecycleError(unknown[0], f"cannot be changed (these can: {allowed})")
    definition = {**attribute.definition}
    counting = False
    for key, value in patch.items():
        if key == "status":
            continue
        if value is None:
            counting |= key in COUNTING and key in definition
            definition.pop(key, None)
        elif definition.get(key) != value:
            counting |= key in COUNTING
            definition[key] = value
    status = attribute.status
    if "status" in patch:
        status = on_request(attribute.status, requested(patch["status"]), backfill=backfill)
        # states left by profiles not written while it was off must not be counted on
        counting |= attribute.status is Status.DISABLED and status in LIVE
    if counting:
        definition["revision"] = int(definition.get("revision", 0)) + 1
        if status in LIVE and backfill:
            status = Status.PROCESSING
    return replace(attribute, definition=definition, status=status, updated_ms=now_ms)


def new_attribute(
    attribute_id: str,
    definition: Mapping[str, Any],
    status: Status,
    now_ms: int,
) -> ManagedAttribute:
    """An attribute made now."""
    return ManagedAttribute(attribute_id, status, dict(definition), now_ms, now_ms)


#: revisions an attribute may have (`compiled`)
REVISIONS = 10_000


def compiled(attribute: ManagedAttribute) -> dict[str, Any]:
    """The rule the workers compute for `attribute`: its definition with a revision of
    its own, made of its creation time and its revision, so that its state key is
    unique to it (an attribute of the same name made before and deleted may have left
    states in profiles not written since)."""
    revision = int(attribute.definition.get("revision", 0)) % REVISIONS
    return {**attribute.definition, "revision": attribute.created_ms * REVISIONS + revision}


def live_definitions(attributes: Sequence[ManagedAttribute]) -> list[tuple[str, Mapping[str, Any]]]:
    """What the workers compute: the live attributes' definitions, each with where it
    comes from (`attributes.rules.parse_rules`'s `managed`)."""
    return [(origin(a.id), compiled(a)) for a in attributes if a.live]


def origin(attribute_id: str) -> str:
    """Where a managed attribute is defined, as a problem names it."""
    return f"ca/attributes/{attribute_id}"


def join_history(
    state: ProfileState, history: ProfileState, attributes: Sequence[CompiledAttribute]
) -> bool:
    """Fold `history`'s states of `attributes` (a backfill's: events before the live
    computation of them began) into `state`'s, in place; whether any changed. Each is
    merged as stitching merges two profiles' (`Aggregator.merge`), so the result is the
    attribute over both spans of events, each counted once; and only once into a
    state (`ProfileState.histories` notes it), for a backfill made again."""
    changed = False
    for attribute in attributes:
        theirs = history.attributes.get(attribute.key)
        if theirs is None or attribute.key in state.histories:
            continue
        mine = state.attributes.get(attribute.key)
        merger = attribute.window if attribute.window is not None else attribute.aggregator
        state.attributes[attribute.key] = theirs if mine is None else merger.merge(mine, theirs)
        state.histories = [*state.histories, attribute.key]
        changed = True
    return changed
