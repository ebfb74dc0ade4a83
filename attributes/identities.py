"""Which identities an event carries, per entity: the first piece of identity stitching.

An entity (`user`, `account`, ...) declares its identity types in priority order and
where each is read from in an event: `userId`, `anonymousId`, or any dotted path such
as `traits.email` or `context.traits.email` (the first path present wins). Values are
normalised per type (an email is trimmed and lower-cased, so `Ada@X.io ` and
`ada@x.io` are one person) and junk values that SDKs send for "unknown" (`null`,
`undefined`, `anonymous`, `0`, empty, and configurable patterns) are ignored: linking
every profile that sent `"null"` as its email would merge strangers.

Each type may cap how many values of it one profile holds (`limit`): a profile
with one `user_id` never takes a second, which is what keeps a shared device or a
mistyped email from merging two people (`attributes.stitching` refuses such a link).

A profile's id is made from its highest-priority identity (`profile_id`): the value
itself for the entity's first type (a user's id is its `user_id`), `type:value` for
the others (`anonymous_id:a-9`), so that ids of different types never collide.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from attributes.events import Event
from attributes.expressions.errors import EvaluationError
from attributes.expressions.regex import InvalidPattern, Pattern
from attributes.paths import MISSING, Getter, InvalidPath, compile_path

_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

#: What SDKs and forms send when they have no value; compared after normalisation,
#: case-insensitively.
DEFAULT_BLOCKED = frozenset({"", "null", "none", "nil", "undefined", "anonymous", "0", "nan"})

Normalisation = Literal["trim", "lower", "email"]


def _trim_lower(value: str) -> str:
    return value.strip().lower()


#: an email is compared like any case-insensitive id (its own name documents the intent)
_NORMALISE: dict[str, Callable[[str], str]] = {
    "trim": str.strip,
    "lower": _trim_lower,
    "email": _trim_lower,
}


class IdentitySpec(pydantic.BaseModel):
    """One identity type of an entity: `{type: email, paths: [traits.email], normalise: email}`."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    type: str
    paths: list[str] = pydantic.Field(min_length=1)
    normalise: Normalisation = "trim"
    #: most values of this type one profile holds (None: no limit)
    limit: int | None = pydantic.Field(default=None, ge=1)

    @pydantic.field_validator("type")
    @classmethod
    def _type_is_a_name(cls, value: str) -> str:
        if not _TYPE.match(value):
            raise ValueError(
                f"identity type {value!r} must be lower-case letters, digits and _ "
                "(at most 32), starting with a letter"
            )
        return value

    @pydantic.field_validator("paths")
    @classmethod
    def _paths_compile(cls, paths: list[str]) -> list[str]:
        for path in paths:
            try:
                compile_path(path)
            except InvalidPath as exc:  # pydantic reports a ValueError, not a RuleError
                raise ValueError(str(exc)) from None
        return paths


class EntitySpec(pydantic.BaseModel):
    """An entity's identities, in priority order, and what counts as no value."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    identities: list[IdentitySpec] = pydantic.Field(min_length=1)
    #: values ignored besides `DEFAULT_BLOCKED` (compared case-insensitively)
    blocked: list[str] = []
    #: regular expressions (RE2 syntax, linear time); a value any of them matches in
    #: full is ignored
    blocked_patterns: list[str] = []
    #: whether an event carrying identities of two profiles merges them
    stitching: bool = True
    #: the types an `alias` event's `previousId` may be, tried in this order (the
    #: first that names a profile wins; else it is taken as the last)
    alias_types: list[str] = []
    #: the event type whose traits describe this entity: a user's come from
    #: `identify` calls, an account's from `group` calls
    traits_from: Literal["identify", "group"] = "identify"

    @pydantic.field_validator("identities")
    @classmethod
    def _types_are_unique(cls, identities: list[IdentitySpec]) -> list[IdentitySpec]:
        seen: set[str] = set()
        for identity in identities:
            if identity.type in seen:
                raise ValueError(f"identity type {identity.type!r} is listed twice")
            seen.add(identity.type)
        return identities

    @pydantic.model_validator(mode="after")
    def _alias_types_are_declared(self) -> EntitySpec:
        declared = [identity.type for identity in self.identities]
        for kind in self.alias_types:
            if kind not in declared:
                raise ValueError(
                    f"alias type {kind!r} is not one of the identities ({', '.join(declared)})"
                )
        return self

    @pydantic.field_validator("blocked_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                _whole(pattern)
            except InvalidPattern as exc:  # pydantic reports a ValueError, not a RuleError
                raise ValueError(f"blocked pattern {pattern!r}: {exc}") from None
        return patterns


#: The `user` entity when the configuration declares none: the Segment spec's ids,
#: and an email wherever identify calls usually put it.
#: At most one user id and five emails per person (as Segment's identity resolution
#: defaults); anonymous ids are per device and browser, so a person has many.
DEFAULT_USER = EntitySpec(
    identities=[
        IdentitySpec(type="user_id", paths=["userId"], limit=1),
        IdentitySpec(
            type="email",
            paths=["traits.email", "context.traits.email"],
            normalise="email",
            limit=5,
        ),
        IdentitySpec(type="anonymous_id", paths=["anonymousId"], limit=1000),
    ],
    alias_types=["user_id", "anonymous_id"],
)

#: A B2B account (Segment's `group` call): its id is a `group` call's `groupId`, or the
#: `context.groupId` that SDKs put on a grouped user's other events; its traits are the
#: `group` calls'.
DEFAULT_ACCOUNT = EntitySpec(
    identities=[IdentitySpec(type="account_id", paths=["groupId", "context.groupId"])],
    traits_from="group",
)


def _whole(pattern: str) -> Pattern:
    """A blocked pattern, matched against a whole value, on RE2: identity values come
    from events, and no event may stall a worker on a pattern (linear time)."""
    return Pattern(f"^(?:{pattern})$")


def _blocks(pattern: Pattern, value: str) -> bool:
    try:
        return pattern.search(value)
    except EvaluationError:  # not valid Unicode (a lone surrogate): nothing to match
        return False


@dataclass(frozen=True, slots=True)
class _CompiledIdentity:
    type: str
    getters: tuple[Getter, ...]
    normalise: Callable[[str], str]


class IdentityRules:
    """An entity's compiled identity rules: `extract(event)` in priority order."""

    def __init__(self, spec: EntitySpec) -> None:
        self.spec = spec
        self.types = tuple(identity.type for identity in spec.identities)
        self.primary = self.types[0]
        self.rank = {kind: rank for rank, kind in enumerate(self.types)}
        self.limits = {identity.type: identity.limit for identity in spec.identities}
        self._identities = tuple(
            _CompiledIdentity(
                identity.type,
                tuple(compile_path(path) for path in identity.paths),
                _NORMALISE[identity.normalise],
            )
            for identity in spec.identities
        )
        self._blocked = DEFAULT_BLOCKED | {value.strip().lower() for value in spec.blocked}
        self._patterns = tuple(_whole(pattern) for pattern in spec.blocked_patterns)

    def extract(self, event: Event) -> list[tuple[str, str]]:
        """The (type, value) identities `event` carries, highest priority first; one per
        type (its first path with a usable value)."""
        found = []
        usable = self.usable
        for identity in self._identities:
            for getter in identity.getters:
                raw = getter(event)
                if raw is MISSING or raw is None:  # most paths of most events: no call
                    continue
                value = usable(identity.normalise, raw)
                if value is not None:
                    found.append((identity.type, value))
                    break
        return found

    def previous(self, event: Event) -> list[tuple[str, str]]:
        """An `alias` event's `previousId` as each identity it may be (`alias_types`,
        in order); empty for other events, or when it is not a usable value."""
        if event.type != "alias" or event.previousId is None:
            return []
        found = []
        for kind in self.spec.alias_types:
            value = self.usable(self._identities[self.rank[kind]].normalise, event.previousId)
            if value is not None:
                found.append((kind, value))
        return found

    def in_priority_order(self, identities: dict[str, list[str]]) -> dict[str, list[str]]:
        """`identities` (type -> values) with the types in priority order, as a profile
        shows them; undeclared types last."""
        last = len(self.types)
        return dict(sorted(identities.items(), key=lambda item: self.rank.get(item[0], last)))

    def lookup_value(self, kind: str, value: str) -> str:
        """`value` as the index holds it, when read by identity type `kind`: normalised
        as extracted (an email read as `Ada@X.io` finds `ada@x.io`); other kinds as
        they are."""
        rank = self.rank.get(kind)
        return value if rank is None else self._identities[rank].normalise(value)

    def profile_id(self, kind: str, value: str) -> str:
        """The id of a profile whose highest-priority identity is `kind`=`value`.

        A primary value with a colon is prefixed too: a bare id never has one, so it
        cannot equal a `type:value` id."""
        return value if kind == self.primary and ":" not in value else f"{kind}:{value}"

    def id_rank(self, profile_id: str) -> int:
        """The priority of the identity type `profile_id` was made from (0 is best)."""
        kind, colon, _ = profile_id.partition(":")
        return self.rank.get(kind, 0) if colon else 0

    def usable(self, normalise: Callable[[str], str], raw: Any) -> str | None:
        """`raw` as an identity value, or None: absent, not a string or an integer
        (a bool, a float, an object), or blocked once normalised."""
        if raw is MISSING or raw is None or isinstance(raw, bool):
            return None
        if isinstance(raw, int):
            raw = str(raw)
        if not isinstance(raw, str):
            return None
        value = normalise(raw)
        if value.lower() in self._blocked:
            return None
        if self._patterns and any(_blocks(pattern, value) for pattern in self._patterns):
            return None
        return value
