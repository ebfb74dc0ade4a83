"""Erasure of a person (a GDPR request): the erase command, and the tombstone it leaves.

An erase is an event of type `erase` on an ingest topic, naming one identity of one
entity (`erase_event`); the worker that owns its partition erases the profile that
identity points to in its normal commit (so ordering with the partition's other events,
exactly-once and conflicts with other workers are handled as for any event). The
profile's state, view, version, record documents, index keys and expiry entries go,
and each of its identities leaves a *tombstone*: what keeps a replay of the topic from
bringing the person back.

A tombstone holds no personal data: it is keyed by a digest of the identity
(`identity_digest`, SHA-256 of entity, type and value: it answers "was this identity
erased?" only to someone who already knows the identity) and holds only offset
watermarks, the profile's applied offsets per input partition with the erase's own,
and when it was erased. An event of that identity at an offset the tombstone holds is a
redelivery of something erased and is skipped (`erased_before`); a later event starts a
new profile. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from attributes.events import Event
from attributes.identities import IdentityRules
from attributes.profile import ProfileState, merge_offsets

#: the event type of an erase command
ERASE = "erase"


class Tombstone(msgspec.Struct, kw_only=True):
    """What an erased identity leaves: offset watermarks, as a `ProfileState` keeps them
    (a floor per input partition and the offsets above it), and when."""

    offsets: dict[str, int] = {}
    recent: dict[str, list[int]] = {}
    erased_at: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Tombstone)


def encode_tombstone(tombstone: Tombstone) -> bytes:
    return _encoder.encode(tombstone)


def decode_tombstone(raw: bytes) -> Tombstone:
    return _decoder.decode(raw)


def identity_digest(entity: str, kind: str, value: str) -> str:
    """The key part naming an erased identity without holding it."""
    return hashlib.sha256(f"{entity}\0{kind}\0{value}".encode()).hexdigest()


def erased_before(tombstone: Tombstone, source: str, offset: int) -> bool:
    """Whether `source`'s `offset` was applied to a profile that was then erased."""
    return offset <= tombstone.offsets.get(source, -1) or offset in tombstone.recent.get(source, ())


def tombstone_of(state: ProfileState, earlier: Iterable[Tombstone], now: int) -> Tombstone:
    """The tombstone of an erased profile: its watermarks, with those of any tombstone
    its identities already had (erased before, then back: both stay erased)."""
    held = ProfileState(id="", offsets=dict(state.offsets), recent=dict(state.recent))
    for tombstone in earlier:
        merge_offsets(held, ProfileState(id="", offsets=tombstone.offsets, recent=tombstone.recent))
    return Tombstone(offsets=held.offsets, recent=held.recent, erased_at=now)


def erase_event(
    entity: str, kind: str, value: str, request: str, *, source: str | None = None, job: str = ""
) -> dict[str, Any]:
    """The erase command for `kind`=`value` of `entity`; `request` is its id (the
    messageId: a retried publish counts once), under which its status is kept. With
    `source`, only what that source contributed goes (`scoped_retraction`), for the
    source delete job `job`."""
    props: dict[str, Any] = {"entity": entity, "identity": {"type": kind, "value": value}}
    if source is not None:
        props |= {"source": source, "job": job}
    return {"type": ERASE, "messageId": request, "properties": props}


def erase_scope(event: Event) -> tuple[str, str] | None:
    """(source, job) of an erase limited to one source's contribution; None: the whole
    profile."""
    source, job = event.properties.get("source"), event.properties.get("job")
    if isinstance(source, str) and source and isinstance(job, str):
        return source, job
    return None


def contributors(state: ProfileState, sources: Mapping[str, str]) -> set[str]:
    """The sources that contributed to a profile: those whose traits it holds, and
    those of every input partition it applied an event of (`sources`: topic -> source;
    a topic not listed is its own source, as the worker names it)."""
    found = set(state.source_traits)
    for log in (*state.offsets, *state.recent):
        topic = log.partition("@")[0].rpartition("/")[0]
        found.add(sources.get(topic, topic))
    return found


def scoped_retraction(state: ProfileState, source: str, sources: Mapping[str, str]) -> str:
    """What an erase limited to `source` removes of `state`: the whole profile
    ("record") when no other source contributed to it, else only the source's traits
    ("fields"): attribute states do not record which source's events made them."""
    return "record" if contributors(state, sources) <= {source} else "fields"


def erase_target(event: Event, entities: Mapping[str, IdentityRules]) -> tuple[str, str, str]:
    """(entity, type, value) an erase event names, the value normalised as indexed;
    raises ValueError naming what is wrong."""
    props = event.properties
    entity = props.get("entity")
    identity = props.get("identity")
    if not isinstance(entity, str) or entity not in entities:
        raise ValueError(f"erase: properties.entity must be one of {', '.join(entities)}")
    rules = entities[entity]
    if not isinstance(identity, dict):
        raise ValueError("erase: properties.identity must be {type, value}")
    kind, value = identity.get("type"), identity.get("value")
    if kind not in rules.types:
        raise ValueError(f"erase: identity type must be one of {', '.join(rules.types)}")
    if not isinstance(value, str) or not value.strip():
        raise ValueError("erase: identity value must be a non-empty string")
    return entity, kind, rules.lookup_value(kind, value)


def identity_of_profile_id(rules: IdentityRules, profile_id: str) -> tuple[str, str]:
    """The identity a profile id was made from (`IdentityRules.profile_id`, inverted)."""
    kind, colon, value = profile_id.partition(":")
    if colon and kind in rules.rank:
        return kind, value
    return rules.primary, profile_id
