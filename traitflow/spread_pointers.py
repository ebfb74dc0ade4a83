"""The API's pointer cache on the spread layout: identity -> the profile id its pointer
named when last read, kept in the API process, so that a read by an identity linked
later (an email, a merged anonymous id) goes straight to the profile's bucket, one round
trip instead of two (docs/redis-cluster.md, "Status of option B", Reads).

A cached pointer is only a guess. The read that uses it fetches, in the same
single-slot MGET as what it serves, the profile's view and version key, and serves it
only if `validates`: the view exists, the version key is not a merge's lock, and the
view lists the identity. Why that is enough (argued in full in the docs): a pointer
moves off a profile only when that profile is merged away (locked before the pointer
is claimed, deleted together with its lock once the pointer moved) or erased (deleted
in its bucket's script, before the pointers), and an expiring pointer gets its lifetime
after its profile's, so it outlives it; while none of that happened, a profile that
lists an identity is the one its pointer names. A miss or a failed check falls back to
reading the pointer (two round trips) and refreshes the entry.

Pure: no I/O, the clock given, so tested without a server
(`tests/unit/test_spread_pointers.py`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from traitflow.spread_claims import LOCKED

#: entries kept at most (least recently used go first): an entry is a few hundred bytes
POINTER_CACHE_SIZE = 65_536
#: how long an entry is used before the pointer is read again (s): a bound on what the
#: cache holds of identities nobody reads any more, not on correctness (each use is
#: checked)
POINTER_CACHE_TTL_S = 300.0

Pointer = tuple[str, str, str]  # entity, identity type, value


class PointerCache:
    """Bounded in entries (`size`, least recently used dropped) and in age (`ttl_s`)."""

    def __init__(
        self,
        size: int = POINTER_CACHE_SIZE,
        ttl_s: float = POINTER_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.clock = clock
        #: pointer -> (when it was read, the profile id it named)
        self._entries: OrderedDict[Pointer, tuple[float, str]] = OrderedDict()

    def get(self, entity: str, index: str, value: str) -> str | None:
        key = (entity, index, value)
        found = self._entries.get(key)
        if found is None:
            return None
        if self.clock() - found[0] >= self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, entity: str, index: str, value: str, profile_id: str) -> None:
        key = (entity, index, value)
        self._entries[key] = (self.clock(), profile_id)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, entity: str, index: str, value: str) -> None:
        self._entries.pop((entity, index, value), None)

    def __len__(self) -> int:
        return len(self._entries)


class _Listed(msgspec.Struct):
    """The part of a view (`attributes.profile.render_view`) a guess is checked on."""

    identities: dict[str, list[str]] = {}


_decode_listed = msgspec.json.Decoder(_Listed).decode


def validates(view: bytes | None, version: bytes | None, index: str, value: str) -> bool:
    """Whether a profile read by a cached pointer may be served for identity
    (`index`, `value`): its view and version key as one MGET read them (see the
    module's docstring). A view that does not decode is no proof: False."""
    if view is None or version is None or version.startswith(LOCKED):
        return False
    try:
        listed = _decode_listed(view)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return value in listed.identities.get(index, ())
