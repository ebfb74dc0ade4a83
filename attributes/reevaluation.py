"""Audience membership evaluated again after a write, only where it can have changed.

A write that follows a render of the same state changes few attributes (an order
touches the order attributes, a page view one count, an identify none but the
traits), so `Reevaluation` evaluates again only the conditions that read one of them,
directly or through derived attributes, or the traits when they changed; the others
keep their last result, and only the conditions evaluated can enter or exit.

That is exact because a condition's value depends on its variables alone: the
attributes it reads, the traits and `now`, the processing time (a condition that
reads it, directly or through a derived attribute, is evaluated on every write), and
a windowed attribute's value moves only when a bucket enters or leaves its window,
which the write is told as a touched attribute (`attributes.profile.expire_windows`),
as the render is. A condition that reads a name the rules do not compute is evaluated
on every write. Traits are compared as JSON text, which tells
`1`, `1.0` and `true` apart (Python's `==` does not; a condition may).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from attributes.audiences import TRAITS, AudienceSet, membership_change
from attributes.clock import NOW
from attributes.expressions import EvaluationError

_json = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Evaluated:
    """One write's membership, and what the next write of the same state needs to
    evaluate only what changed (`Reevaluation.evaluate`). Its members and `joined` are
    not changed once made: the write that made them serves and stores them."""

    #: the condition variables, as CEL values (updated in place by the next write)
    activation: dict[str, Any]
    #: `{audience: is a member}`, in declaration order (the view's `_audiences`)
    members: dict[str, bool]
    #: the merged traits the membership saw, as JSON (None: not read, or not JSON)
    traits: bytes | None
    #: the audiences the profile is in, for its state (the very list it keeps)
    joined: list[str]
    entered: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a write evaluates again for one set of changed attributes."""

    #: (declaration index, name, condition) of each audience to evaluate, in order
    audiences: tuple[tuple[int, str, Callable[[Any], Any]], ...]
    #: (variable, its conversion) of each condition variable whose value may change
    variables: tuple[tuple[str, Callable[[Any], Any]], ...]


#: distinct sets of changed attributes whose plan is memoised per entity
_PLANS = 4096


class Reevaluation:
    """Evaluates `audiences` once per write, again only where something it reads
    changed since the last write of the same state. `aggregated`: the names of the
    entity's aggregated attributes; `derived`: each derived attribute's name -> the
    names its expression reads (they are computed from the aggregated ones)."""

    def __init__(
        self,
        audiences: AudienceSet,
        aggregated: Iterable[str],
        derived: Mapping[str, Collection[str]],
    ) -> None:
        self.audiences = audiences
        #: (declaration index, name, condition) of every audience
        self._all = tuple(
            (index, audience.name, audience.condition.evaluate)
            for index, audience in enumerate(audiences.audiences)
        )
        known = set(aggregated)

        def sources(name: str, seen: frozenset[str]) -> frozenset[str] | None:
            """The attributes `name`'s value is computed from, itself included (None:
            a name the rules do not compute)."""
            if name in known:
                return frozenset({name})
            if name not in derived or name in seen:  # a cycle is refused at load
                return None
            found: set[str] = {name}
            for read in derived[name]:
                more = sources(read, seen | {name})
                if more is None:
                    return None
                found |= more
            return frozenset(found)

        #: attribute (aggregated or derived) -> (the audiences whose condition reads
        #: it, directly or through a derived attribute; the variables computed from it)
        self._readers: dict[str, tuple[set[int], set[str]]] = {}
        always: set[int] = set()
        unknown: set[str] = set()
        for index, audience in enumerate(audiences.audiences):
            if NOW in audience.condition.names:
                always.add(index)  # the clock moved since the last write
            for name in audience.condition.names - {TRAITS, NOW}:
                found = sources(name, frozenset())
                if found is None:
                    always.add(index)
                    unknown.add(name)
                for source in found or ():
                    readers, variables = self._readers.setdefault(source, (set(), set()))
                    readers.add(index)
                    variables.add(name)
        #: the audiences evaluated on every write (they read a name whose changes are
        #: not known) and their variables of that kind, converted on every write
        self._always = frozenset(always)
        self._unknown = frozenset(unknown)
        #: the audiences that read the traits
        self._traits = frozenset(
            index
            for index, audience in enumerate(audiences.audiences)
            if TRAITS in audience.condition.names
        )
        self._convert = dict(audiences.reads)
        #: (changed attributes, traits changed) -> what to evaluate again
        self._plans: dict[tuple[frozenset[str], bool], _Plan] = {}

    def evaluate(
        self,
        attributes: Mapping[str, Any],
        traits: Mapping[str, Any],
        joined: list[str],
        *,
        last: Evaluated | None = None,
        touched: Collection[str] = (),
        now: Any = None,
    ) -> Evaluated:
        """The membership for a profile's rendered attribute values and merged traits,
        and its changes from `joined` (the audiences its state says it is in).
        `last`: what the last write of the same state evaluated (None: evaluate every
        condition); `touched`: the attributes that changed since (as the render is
        told, windows that moved included); `now`: the processing time as a timestamp,
        for the conditions that read it (evaluated on every write)."""
        seen = as_json(traits) if self._traits else None
        if last is None:
            activation = self.audiences.activation(attributes, traits, now=now)
            members = self._evaluate(self._all, activation, {})
            return self._changes(Evaluated(activation, members, seen, joined), joined)
        changed = frozenset(touched)
        retraits = bool(self._traits) and (seen is None or seen != last.traits)
        plan = self._plans.get((changed, retraits)) or self._plan(changed, retraits)
        if not plan.audiences:
            if joined is last.joined:
                return Evaluated(last.activation, last.members, last.traits, joined)
            return self._changes(
                Evaluated(last.activation, last.members, last.traits, joined), joined
            )
        activation = last.activation
        for name, convert in plan.variables:
            activation[name] = convert(attributes.get(name))
        if retraits:
            activation[TRAITS] = traits
        if now is not None and self.audiences.reads_now:
            activation[NOW] = now
        members = self._evaluate(plan.audiences, activation, dict(last.members))
        evaluated = Evaluated(activation, members, seen, joined)
        if joined is not last.joined:  # changed since: compared in full
            return self._changes(evaluated, joined)
        before = last.members
        for _, name, _ in plan.audiences:  # the others are as they were
            if members[name] != before[name]:
                (evaluated.entered if members[name] else evaluated.exited).append(name)
        if evaluated.entered or evaluated.exited:
            evaluated.joined = [name for name, member in members.items() if member]
        return evaluated

    @staticmethod
    def _evaluate(
        audiences: Sequence[tuple[int, str, Callable[[Any], Any]]],
        activation: Mapping[str, Any],
        members: dict[str, bool],
    ) -> dict[str, bool]:
        """`members`, with each of `audiences` evaluated (as `Audience.includes`)."""
        for _, name, condition in audiences:
            try:
                members[name] = condition(activation) is True
            except EvaluationError:
                members[name] = False
        return members

    @staticmethod
    def _changes(evaluated: Evaluated, joined: list[str]) -> Evaluated:
        """`evaluated` with its enters and exits from `joined`, in full."""
        evaluated.entered, evaluated.exited = membership_change(joined, evaluated.members)
        if evaluated.entered or evaluated.exited:
            evaluated.joined = [name for name, member in evaluated.members.items() if member]
        return evaluated

    def _plan(self, changed: frozenset[str], retraits: bool) -> _Plan:
        stale = set(self._always)
        variables = set(self._unknown)
        for name in changed:
            found = self._readers.get(name)
            if found is not None:
                stale |= found[0]
                variables |= found[1]
        if retraits:
            stale |= self._traits
        plan = _Plan(
            tuple(entry for entry in self._all if entry[0] in stale),
            tuple((name, self._convert[name]) for name in sorted(variables)),
        )
        if len(self._plans) < _PLANS:
            self._plans[changed, retraits] = plan
        return plan


def as_json(traits: Mapping[str, Any]) -> bytes | None:
    """The traits as JSON text, to compare with the last write's (None: they cannot
    be written as JSON, so they count as changed)."""
    try:
        return _json(traits)
    except (TypeError, ValueError, OverflowError):
        return None
