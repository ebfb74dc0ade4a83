"""Whether an event may enter the pipeline: the checks the worker makes of every record
before any entity computes it, in one place.

The worker (`streams.processor`) dead-letters a record these checks refuse; the HTTP
ingest (`api.ingest`) runs the same checks before it acknowledges a call, so that an
event the API accepted is never dead-lettered for a reason the caller could have been
told. Pure: the time is given, nothing is read or written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attributes.erasure import ERASE, erase_target
from attributes.events import Event, InvalidEvent, decode_event, event_time_ms
from attributes.identities import IdentityRules
from attributes.limits import EventLimits, identity_problem, time_problem


@dataclass(frozen=True, slots=True)
class Claim:
    """One entity's part of an admitted event: the identities it carries of that
    entity, and (an `alias`) the previous ones."""

    entity: str
    identities: list[tuple[str, str]]
    previous: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Admitted:
    """An event that passed every check: decoded, its time in epoch ms, and the entities
    that claim it (at least one), in the order of the rules."""

    event: Event
    at_ms: int
    claims: list[Claim]


class Admission:
    """The checks for one set of entities' identity rules and one set of limits."""

    def __init__(self, entities: Mapping[str, IdentityRules], limits: EventLimits) -> None:
        self.entities = dict(entities)
        self.limits = limits
        types = {entity: ", ".join(rules.types) for entity, rules in self.entities.items()}
        if len(types) == 1:
            ((entity, listed),) = types.items()
            self.unclaimed = f"event carries no {entity} identity ({listed})"
        else:
            listed = "; ".join(f"{entity}: {listed}" for entity, listed in types.items())
            self.unclaimed = f"event carries no identity of any entity ({listed})"

    def admit(self, raw: bytes, *, now_ms: int, fallback_ms: int) -> Admitted:
        """`raw` decoded and checked: a JSON event (`decode_event`) within the limits,
        not too far in the future of `now_ms` (an event without a time is at
        `fallback_ms`, the record's timestamp), claimed by an entity, with identities
        within the limits. Raises `InvalidEvent` with the reason."""
        limits = self.limits
        event = decode_event(raw, limits)
        at = event_time_ms(event, fallback_ms)
        if problem := time_problem(at, now_ms, limits):
            raise InvalidEvent(problem)
        claims: list[Claim] = []
        carried: list[tuple[str, str]] = []
        if event.type == ERASE:  # names its entity and identity itself
            try:
                entity, kind, value = erase_target(event, self.entities)
            except ValueError as exc:
                raise InvalidEvent(str(exc)) from None
            if problem := identity_problem([(kind, value)], event.messageId, limits):
                raise InvalidEvent(problem)
            return Admitted(event, at, [Claim(entity, [(kind, value)], [])])
        for entity, rules in self.entities.items():
            identities = rules.extract(event)
            if identities:
                previous = rules.previous(event)
                carried += identities
                carried += previous
                claims.append(Claim(entity, identities, previous))
        if not claims:
            raise InvalidEvent(self.unclaimed)
        if problem := identity_problem(carried, event.messageId, limits):
            raise InvalidEvent(problem)
        return Admitted(event, at, claims)
