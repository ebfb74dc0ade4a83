"""The worker's side of an erase (`attributes.erasure`): the write of an erased profile,
and which events a tombstone makes redeliveries.

An erase is applied like any event (its offset recorded, the profile wiped, its view
gone, its audiences left: `streams.rendering`), and its write is then turned into an
erasure: nothing of the profile is stored, its identities' tombstones are, in the same
conditional commit (`traitflow.commit_plan`). The batch processor gives every erase a
commit of its own, after the events before it and before those after it
(`erase_segments`), so that what the profile holds when erased is exactly what came
before the erase in its partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import orjson

from attributes.erasure import (
    ERASE,
    Tombstone,
    decode_tombstone,
    encode_tombstone,
    erase_scope,
    erased_before,
    identity_digest,
    scoped_retraction,
    tombstone_of,
)
from attributes.events import Event, iso_from_ms
from attributes.profile import ProfileState, Retraction
from attributes.stitching import Identity
from streams.records import Identified
from traitflow.store import Erasure, ProfileWrite


def erase_segments(events: list[Identified]) -> list[list[Identified]]:
    """`events` cut so that every erase is alone, in order: the events before it commit
    first, then the erase, then the events after it."""
    if not any(item.event.type == ERASE for item in events):
        return [events]
    segments: list[list[Identified]] = [[]]
    for item in events:
        if item.event.type == ERASE:
            segments += [[item], []]
        else:
            segments[-1].append(item)
    return [segment for segment in segments if segment]


def decoded(found: Mapping[Identity, bytes]) -> dict[Identity, Tombstone]:
    return {identity: decode_tombstone(raw) for identity, raw in found.items()}


def erased_event(item: Identified, tombstones: Mapping[Identity, Tombstone]) -> bool:
    """Whether the event was applied to a profile since erased (one of its identities'
    tombstones holds its offset): a replay, which must not bring the person back."""
    if not tombstones:
        return False
    record = item.record
    for identity in item.ids:
        tombstone = tombstones.get(identity)
        if tombstone is not None and erased_before(tombstone, record.log, record.offset):
            return True
    return False


def profile_identities(write: ProfileWrite) -> list[Identity]:
    return [(kind, value) for kind, values in write.state.identities.items() for value in values]


def erase(
    write: ProfileWrite,
    *,
    request: str | None,
    earlier: Iterable[Tombstone],
    now: int,
) -> None:
    """Turn the write of a profile an erase wiped into its erasure: its keys go, each of
    its identities gets a tombstone (with `earlier`, those its identities had), and the
    request `request` (None: none was named) is marked applied."""
    state = write.state
    identities = profile_identities(write)
    tombstone = encode_tombstone(tombstone_of(state, earlier, now))
    entity = state.entity
    status = {
        "id": request,
        "status": "applied",
        "entity": entity,
        "found": state.version > 1,  # the erase itself made version 1 of a new one
        "appliedAt": iso_from_ms(now),
    }
    write.erasure = Erasure(
        request=request or "",
        status=orjson.dumps(status),
        tombstones={identity_digest(entity, *identity): tombstone for identity in identities},
        identities=identities,
        partitions=sorted({log.partition("@")[0] for log in (*state.offsets, *state.recent)}),
    )
    write.identities = []
    write.persist = []
    write.ttl_ms = None
    write.expiry = None


def erase_request(items: Sequence[Identified]) -> tuple[bool, str | None]:
    """Whether a profile's events of a batch end with an erase, and its request id (None
    for a source delete job's: its status is the job's)."""
    if items and items[-1].event.type == ERASE:
        event = items[-1].event
        return True, None if erase_scope(event) is not None else event.messageId
    return False, None


def erase_retraction(
    event: Event, state: ProfileState, sources: Mapping[str, str]
) -> tuple[str, Retraction]:
    """(origin, retraction) an erase is applied with (`apply_event`): the whole profile,
    or, for a source delete job's, what `scoped_retraction` says of that source."""
    scope = erase_scope(event)
    if scope is None:
        return "", "record"
    source = scope[0]
    return source, "record" if scoped_retraction(state, source, sources) == "record" else "fields"


def erase_job(items: Sequence[Identified]) -> str | None:
    """The source delete job whose command a profile's events of a batch end with."""
    if items and items[-1].event.type == ERASE and (scope := erase_scope(items[-1].event)):
        return scope[1] or None
    return None
