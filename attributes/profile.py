"""The profile: its stored state, how one event changes it, and the served view.

`ProfileState` is what the pipeline keeps per profile: identities, identify traits
(per source, latest by event time per field), one aggregator state per attribute, and
which offsets of each input partition it has applied. Those are written in the same
atomic write as the state, which is what makes a replayed event change nothing.

Which offsets a profile has applied is a *floor* per partition plus the offsets above
it (`recent`). The floor is not the profile's highest offset: it is an offset below
which the partition's whole batch was committed, for every profile, when the profile
was last written (`settle`). That distinction is what makes merges exact. A batch can
commit in parts (`streams.effects`): profile A may hold offset 100 while profile B's
offset 50, of the same batch, is still to be computed again. If a merge of A and B
then took A's highest offset as "everything up to 100 is applied", B's event would be
taken for a duplicate and lost. A floor is a fact about the partition, so the higher of
two floors is still true, and `recent` names exactly the offsets above it that either
profile applied.

`render_view` turns the state into the JSON document the API serves as-is.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from attributes.aggregators import Rejected
from attributes.clock import NOW, now_value
from attributes.events import Event, iso_from_ms
from attributes.filters import FilterResults
from attributes.paths import MISSING
from attributes.policies import DEFAULT_POLICY, MergePolicy, field_values
from attributes.ruleset import RuleSet


class ProfileState(msgspec.Struct, kw_only=True):
    id: str
    entity: str = "user"
    identities: dict[str, list[str]] = {}
    #: source -> trait -> [event ms, messageId, value]: per source, the most recent value
    #: by event time; a merge policy picks among sources (`attributes.policies`)
    source_traits: dict[str, dict[str, list[Any]]] = {}
    #: attribute state key (`CompiledAttribute.key`: its name and shape) -> its state
    attributes: dict[str, Any] = {}
    #: "topic/partition" -> the floor: every offset at or below it that was this
    #: profile's is applied (see the module docstring)
    offsets: dict[str, int] = {}
    #: "topic/partition" -> the offsets above its floor this profile applied, ascending
    recent: dict[str, list[int]] = {}
    first_seen: int = 0
    last_seen: int = 0
    version: int = 0
    #: deleted by a source (`Retraction.RECORD`): kept, without a view, so that its
    #: identities and watermarks stay; the next event starts it afresh
    deleted: bool = False
    #: the audiences it was a member of when last written (`attributes.audiences`):
    #: what the next write's membership is compared with to find enters and exits
    audiences: list[str] = []
    #: the categories it was counted in when last written (`traitflow.profile_counts`);
    #: None: stored before profiles were counted, so never counted
    counted: list[str] | None = None
    #: the attribute state keys a backfill joined its history into (`attributes.
    #: catalog.join_history`): one that starts again, its process having died midway,
    #: does not join it twice
    histories: list[str] = []


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ProfileState)


def encode_state(state: ProfileState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> ProfileState:
    return _state_decoder.decode(raw)


@dataclass(frozen=True, slots=True)
class Skip:
    """An attribute that did not take an event, and why (reported, never raised).

    `kind` is the category counted in metrics: `missing_field`, `wrong_type`,
    `outside_window` or `filter_error` (a `where` filter that failed on the event)."""

    attribute: str
    message_id: str | None
    reason: str
    kind: str = "wrong_type"


@dataclass(slots=True)
class Applied:
    changed: bool
    skips: list[Skip] = field(default_factory=list)
    #: the attributes whose state the event changed
    touched: list[str] = field(default_factory=list)


def reconcile(state: ProfileState, rules: RuleSet) -> list[str]:
    """Make a stored state fit the current rules; return the state keys dropped.

    A rule file can change between runs. Attribute states are stored under a key that
    names the attribute and the shape of its state (function, `list` options, window),
    so an attribute whose definition changed shape finds no state and starts afresh
    instead of failing on every event (which would dead-letter them all). States no
    current attribute reads are dropped. Cheap when nothing changed: one set check."""
    if state.attributes.keys() <= rules.state_keys:
        return []
    dropped = [key for key in state.attributes if key not in rules.state_keys]
    for key in dropped:
        del state.attributes[key]
    if state.histories:
        state.histories = [key for key in state.histories if key in rules.state_keys]
    return dropped


def applied_before(state: ProfileState, source: str, offset: int) -> bool:
    """Whether `source`'s `offset` was applied to this profile (a redelivery)."""
    return offset <= state.offsets.get(source, -1) or offset in state.recent.get(source, ())


def settle(state: ProfileState, floors: Mapping[str, int]) -> None:
    """Raise the profile's floors to `floors` (input partition -> an offset at or below
    which every record of that partition is committed, for every profile: the one before
    the first offset of the batch being written) and forget the offsets under them.
    Called on every write, so that `recent` holds one batch's offsets at most. Only
    partitions it holds offsets above the floor of move: the others have none to forget."""
    offsets, recent = state.offsets, state.recent
    for source in [*recent]:  # only a partition it holds offsets of has any to forget
        floor = floors.get(source)
        if floor is not None and floor > offsets.get(source, -1):
            offsets[source] = floor
            kept = [offset for offset in recent[source] if offset > floor]
            if kept:
                recent[source] = kept
            else:
                del recent[source]


def merge_offsets(survivor: ProfileState, absorbed: ProfileState) -> None:
    """What two profiles applied, as one: the higher floor per partition (both are
    facts about the partition) and every offset above it that either applied."""
    for source, floor in absorbed.offsets.items():
        if floor > survivor.offsets.get(source, -1):
            survivor.offsets[source] = floor
    for source in survivor.recent.keys() | absorbed.recent.keys():
        floor = survivor.offsets.get(source, -1)
        offsets = {*survivor.recent.get(source, ()), *absorbed.recent.get(source, ())}
        kept = sorted(offset for offset in offsets if offset > floor)
        if kept:
            survivor.recent[source] = kept
        else:
            survivor.recent.pop(source, None)


def add_identity(state: ProfileState, kind: str, value: str) -> None:
    values = state.identities.setdefault(kind, [])
    if value not in values:
        values.append(value)


#: what a source's `delete` event removes: only the traits it provided, or the whole
#: record (reads then answer 404)
Retraction = Literal["fields", "record"]


def retract(state: ProfileState, origin: str, retraction: Retraction) -> None:
    """Apply a `delete` from source `origin`: its traits go, or the whole profile does
    (all but its id, identities and applied offsets, which keep replays harmless)."""
    if retraction == "fields":
        state.source_traits.pop(origin, None)
        return
    state.source_traits = {}
    state.attributes = {}
    state.first_seen = state.last_seen = 0
    state.deleted = True


def apply_event(
    state: ProfileState,
    event: Event,
    *,
    ts: int,
    rules: RuleSet,
    source: str,
    offset: int,
    now: int,
    origin: str = "default",
    retraction: Retraction = "fields",
    traits_from: str = "identify",
) -> Applied:
    """Apply one event at `source` ("topic/partition") `offset` to `state` in place;
    `now` (epoch ms) is the processing time that windows are evaluated at, and
    `origin` the source name of its topic (whose traits an event of type `traits_from`
    sets, and a `delete` removes as `retraction` says). A user's traits come from
    `identify` calls, an account's from `group` calls.

    An offset applied before (`applied_before`) is ignored and `changed` is False.
    Identities are not this function's business: which of an event's identities a
    profile takes is decided with the other profiles in view (`attributes.stitching`).
    """
    recent = state.recent.get(source)  # `applied_before`, inlined: once per event
    if offset <= state.offsets.get(source, -1) or (recent is not None and offset in recent):
        return Applied(changed=False)
    if recent is None:
        state.recent[source] = [offset]
    elif offset > recent[-1]:
        recent.append(offset)
    else:  # a merge can bring offsets in any order
        bisect.insort(recent, offset)
    state.version += 1
    if event.type == "delete" or event.type == "erase":
        # a profile that first hears of its identity in a delete has nothing to serve;
        # what an erase removes is the caller's to say (`attributes.erasure`)
        retract(state, origin, "record" if state.version == 1 else retraction)
        return Applied(changed=True, touched=[a.name for a in rules.attributes])
    first = state.version == 1 or state.deleted
    state.deleted = False
    state.first_seen = ts if first else min(state.first_seen, ts)
    state.last_seen = ts if first else max(state.last_seen, ts)
    mid = event.messageId or ""

    if event.type == traits_from:
        traits = state.source_traits.setdefault(origin, {})
        for trait, value in event.traits.items():
            current = traits.get(trait)
            if current is None or (ts, mid) >= (current[0], current[1]):
                traits[trait] = [ts, mid, value]

    applied = Applied(changed=True)
    filters: FilterResults | None = None
    for attribute in rules.for_event(event.type, event.event):
        if attribute.where is not None:
            filters = filters or FilterResults(event)
            verdict = filters.verdict(attribute.where)
            if verdict is not True:
                if verdict is not False:
                    applied.skips.append(
                        Skip(attribute.name, event.messageId, f"where: {verdict}", "filter_error")
                    )
                continue
        value = None
        if attribute.getter is not None:
            value = attribute.getter(event)
            if value is MISSING or value is None:
                if attribute.aggregator.needs_field:
                    applied.skips.append(
                        Skip(attribute.name, event.messageId, "field is missing", "missing_field")
                    )
                continue
        current = state.attributes.get(attribute.key)
        try:
            if attribute.window is None:
                aggregator = attribute.aggregator
                current = aggregator.initial() if current is None else current
                state.attributes[attribute.key] = aggregator.add(current, value, ts=ts, mid=mid)
            else:
                window = attribute.window
                current = window.initial() if current is None else current
                state.attributes[attribute.key] = window.add(
                    current, value, ts=ts, mid=mid, now=now
                )
        except Rejected as exc:
            applied.skips.append(Skip(attribute.name, event.messageId, str(exc), exc.kind))
            continue
        applied.touched.append(attribute.name)
    return applied


def compute_attributes(
    state: ProfileState,
    rules: RuleSet,
    now: int,
    *,
    previous: Mapping[str, Any] | None = None,
    touched: Container[str] = (),
) -> dict[str, Any]:
    """Attribute values at `now` for every rule, in rule-file order; never-fed
    attributes are their aggregator's empty result (0 for counts and sums, else null).

    `previous`, when given, holds this state's values from its last rendering, and
    `touched` the attributes changed since, including those `expire_windows` dropped
    buckets of at `now` (it must have run): the others keep their previous values. A
    windowed attribute whose buckets are all inside its window has the same value as
    long as none is added or dropped. Derived attributes are always computed again."""
    values: dict[str, Any] = {}
    for attribute in rules.attributes:
        name = attribute.name
        if previous is not None and name not in touched:
            values[name] = previous[name]
            continue
        stored = state.attributes.get(attribute.key)
        if attribute.window is not None:
            values[name] = attribute.window.result(stored or [], now)
        else:
            aggregator = attribute.aggregator
            values[name] = aggregator.result(aggregator.initial() if stored is None else stored)
    if rules.derived:
        inputs = {a.name: a.cel_value(values[a.name]) for a in rules.derived_inputs}
        if rules.derived_reads_now:
            inputs[NOW] = now_value(now)  # the processing time (`attributes.clock`)
        for derived in rules.derived:
            values[derived.name] = inputs[derived.name] = derived.evaluate(inputs)
        if rules.derived_interleaved:
            return {name: values[name] for name in rules.names}
    return values


def expire_windows(
    state: ProfileState, rules: RuleSet, now: int, *, touched: set[str] | None = None
) -> int | None:
    """Drop the buckets that are out of their windows at `now`, in place, adding the
    names of the attributes that lost some to `touched`; return when the next one
    leaves its window (None: no windowed state left)."""
    due: int | None = None
    for attribute in rules.windowed:
        assert attribute.window is not None
        stored = state.attributes.get(attribute.key)
        if not stored:
            continue
        buckets = len(stored)
        attribute.window.expire(stored, now)
        if touched is not None and len(stored) != buckets:
            touched.add(attribute.name)
        expiry = attribute.window.next_expiry(stored)
        if expiry is not None and (due is None or expiry < due):
            due = expiry
    return due


def render_view(
    state: ProfileState,
    rules: RuleSet,
    now: int,
    *,
    previous: Mapping[str, Any] | None = None,
    touched: Container[str] = (),
    policy: MergePolicy = DEFAULT_POLICY,
) -> dict[str, Any]:
    """The served profile document, its windows as they are at `now` (`previous` and
    `touched`: see `compute_attributes`) and its traits merged under `policy`."""
    return {
        "id": state.id,
        "entity": state.entity,
        "identities": state.identities,
        "traits": field_values(state.source_traits, policy),
        "attributes": compute_attributes(state, rules, now, previous=previous, touched=touched),
        "first_seen": iso_from_ms(state.first_seen),
        "last_seen": iso_from_ms(state.last_seen),
        "version": state.version,
    }
