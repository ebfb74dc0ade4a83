"""The compiled rule set (`RuleSet`): what the hot path asks, per event, which
attributes it feeds, and per entity, which rules its profiles are computed with.

It is apart from the rule file (`attributes.rules`) because the two change for
different reasons: the file's format and checks grow with what users may write, while
this is the shape every event is computed against, read by the worker, the API and
the backfill alike, and kept fast (`for_event` is one memoised dict lookup per
event's (type, name)). A `RuleSet` is made by `attributes.rules.parse_rules`, or
directly with `RuleSet.build` from compiled attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attributes.aggregators import Aggregator
from attributes.audiences import Audience, AudienceSet
from attributes.clock import NOW
from attributes.derived import DerivedAttribute, cel_value
from attributes.expressions import Expression
from attributes.paths import Getter
from attributes.specs import AttributeSpec
from attributes.windows import WindowedAggregator


@dataclass(frozen=True, slots=True)
class CompiledAttribute:
    """An attribute that folds events: what `apply_event` runs for each event."""

    name: str
    entity: str
    aggregator: Aggregator
    getter: Getter | None
    description: str = ""
    where: Expression | None = None
    #: set for a `lookback` attribute: `aggregator` applied per time bucket
    window: WindowedAggregator | None = None
    #: the attribute's value as its CEL type says (for derived expressions)
    cel_value: Callable[[Any], Any] = field(default=cel_value("count"), repr=False)
    #: where its state is kept in `ProfileState.attributes`: the name and what the
    #: form of the state depends on (function, `list` options, window)
    key: str = ""


#: Distinct (type, name) pairs whose attribute selection is memoised.
_MEMO_LIMIT = 10_000


@dataclass(frozen=True)
class RuleSet:
    """The compiled rules. `for_event(name)` gives the attributes an event feeds."""

    attributes: tuple[CompiledAttribute, ...]
    _by_event: dict[str, tuple[CompiledAttribute, ...]] = field(repr=False)
    _any_event: tuple[CompiledAttribute, ...] = field(repr=False)
    _types: dict[str, frozenset[str] | None] = field(repr=False)
    #: derived attributes, each after the attributes it reads
    derived: tuple[DerivedAttribute, ...] = ()
    #: every attribute name in rule-file order: the order of the served view
    names: tuple[str, ...] = ()
    #: the attributes with a lookback window
    windowed: tuple[CompiledAttribute, ...] = ()
    #: the attributes derived expressions read
    derived_inputs: tuple[CompiledAttribute, ...] = ()
    #: whether a derived attribute comes before an aggregated one in the file (the
    #: served view then needs reordering)
    derived_interleaved: bool = False
    #: the attributes' state keys (see `attributes.profile.reconcile`)
    state_keys: frozenset[str] = frozenset()
    #: the entities the rules are for, in file order
    entities: tuple[str, ...] = ()
    #: entity -> the rules of that entity alone (when there are several: `of`)
    parts: Mapping[str, RuleSet] = field(default_factory=dict, repr=False)
    _chosen: dict[tuple[str, str | None], tuple[CompiledAttribute, ...]] = field(
        default_factory=dict, repr=False
    )
    #: whether a derived attribute reads `now`, and whether it or an audience condition
    #: does: values then change on time, without events (`attributes.clock`)
    derived_reads_now: bool = False
    reads_now: bool = False
    #: the audiences (`attributes.audiences`), in file order, and what evaluates them
    audiences: tuple[Audience, ...] = ()
    membership: AudienceSet = field(default_factory=lambda: AudienceSet.of((), {}))
    #: while a recomputation runs (`attributes.catalog.Recomputation`): each attribute
    #: again, under a state key of the recomputation's generation. Events feed them,
    #: merges merge them and windows expire them, as the served ones; no view shows
    #: them (they are not in `attributes`) until the recomputation makes them served
    shadows: tuple[CompiledAttribute, ...] = ()

    @property
    def changes_on_time(self) -> bool:
        """Whether its profiles' views change without events (windows, `now`): they are
        then indexed by when to render them again (`streams.rendering`)."""
        return bool(self.windowed) or self.reads_now

    def of(self, entity: str) -> RuleSet:
        """The rules of one entity: what its profiles are computed with."""
        part = self.parts.get(entity)
        if part is not None:
            return part
        if set(self.entities) <= {entity}:  # every rule is the entity's (or there are none)
            return self
        return _NO_RULES

    def for_event(self, event_type: str, event_name: str | None) -> tuple[CompiledAttribute, ...]:
        """The attributes an event of this type and name feeds, in rule order of their
        lists (named ones first); memoised, as a stream repeats few (type, name) pairs."""
        key = (event_type, event_name)
        chosen = self._chosen.get(key)
        if chosen is None:
            named = self._by_event.get(event_name, ()) if event_name is not None else ()
            chosen = tuple(
                attribute
                for attribute in (*named, *self._any_event)
                if (types := self._types[attribute.name]) is None or event_type in types
            )
            if len(self._chosen) < _MEMO_LIMIT:
                self._chosen[key] = chosen
        return chosen

    @classmethod
    def build(
        cls,
        attributes: list[tuple[AttributeSpec, CompiledAttribute]],
        derived: Sequence[DerivedAttribute] = (),
        names: Sequence[str] | None = None,
        audiences: Sequence[Audience] = (),
        shadows: Sequence[tuple[AttributeSpec, CompiledAttribute]] = (),
    ) -> RuleSet:
        entities = tuple(
            dict.fromkeys(
                [
                    *(compiled.entity for _, compiled in attributes),
                    *(d.entity for d in derived),
                    *(audience.entity for audience in audiences),
                ]
            )
        )
        parts: dict[str, RuleSet] = {}
        if len(entities) > 1:
            entity_of = {compiled.name: compiled.entity for _, compiled in attributes}
            entity_of.update((d.name, d.entity) for d in derived)
            for entity in entities:
                parts[entity] = cls.build(
                    [
                        (spec, compiled)
                        for spec, compiled in attributes
                        if compiled.entity == entity
                    ],
                    [d for d in derived if d.entity == entity],
                    None if names is None else [n for n in names if entity_of[n] == entity],
                    [audience for audience in audiences if audience.entity == entity],
                    [(spec, compiled) for spec, compiled in shadows if compiled.entity == entity],
                )
        by_event: dict[str, list[CompiledAttribute]] = {}
        any_event: list[CompiledAttribute] = []
        types: dict[str, frozenset[str] | None] = {}
        for spec, compiled in (*attributes, *shadows):
            events = [spec.event] if isinstance(spec.event, str) else spec.event
            if events is not None:
                events = list(dict.fromkeys(events))  # listed twice still counts once
            if events is None:
                any_event.append(compiled)
            for name in events or ():
                by_event.setdefault(name, []).append(compiled)
            types[spec.name] = frozenset(spec.type) if spec.type else None
        if names is None:
            names = [compiled.name for _, compiled in attributes] + [d.name for d in derived]
        read = set().union(*(d.expression.names for d in derived))
        aggregated = [compiled.name for _, compiled in attributes]
        conditions_read = set().union(*(audience.condition.names for audience in audiences))
        return cls(
            attributes=tuple(compiled for _, compiled in attributes),
            _by_event={name: tuple(attrs) for name, attrs in by_event.items()},
            _any_event=tuple(any_event),
            _types=types,
            derived=tuple(derived),
            names=tuple(names),
            windowed=tuple(compiled for _, compiled in (*attributes, *shadows) if compiled.window),
            derived_inputs=tuple(compiled for _, compiled in attributes if compiled.name in read),
            derived_interleaved=list(names)[: len(aggregated)] != aggregated,
            state_keys=frozenset(compiled.key for _, compiled in (*attributes, *shadows)),
            entities=entities,
            parts=parts,
            derived_reads_now=NOW in read,
            reads_now=NOW in read or NOW in conditions_read,
            audiences=tuple(audiences),
            membership=AudienceSet.of(
                audiences, {compiled.name: compiled.cel_value for _, compiled in attributes}
            ),
            shadows=tuple(compiled for _, compiled in shadows),
        )


#: the rules of an entity that no rule is for
_NO_RULES = RuleSet.build([])
