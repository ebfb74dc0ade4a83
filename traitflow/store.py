"""Profile storage: the store, what a write holds and what a commit checks.

Both the worker (writes) and the API (reads) go through `ProfileStore`. There are two
implementations: `RedisProfileStore` (`traitflow.redis_store`), the real one, and
`MemoryProfileStore`, which lets the processing logic be tested without I/O. The
Redis keys a store writes are listed, with every other key traitflow stores, in
`traitflow.key_layout`.

A batch costs a few round trips whatever its size: one MGET reads where its
identities point, one loads every state they name (and its version key), and the
commit (one Lua script, `traitflow.commit_script`) writes every state, view, version,
index key and expiry entry at once. The commit is atomic and conditional (`Expected`): it
writes only if every new identity still points nowhere and every profile still has
the version it was loaded at (a profile that another commit merges away loses its
version key, so pointers to loaded profiles need no check of their own); otherwise
nothing is written, and the `Conflict` names every check that failed, so that the
caller computes again only what read them. That is what makes two workers safe when
stitching sends one person's events through both: whichever commits second sees the
first's write and redoes that person's events on top of it. A reader
never sees a view without its index, and the offset watermark inside a state is never
ahead of or behind the state it guards; nor is an applied messageId. Finding the
profiles whose windows are due is
one ZRANGE per input partition, whatever the number of silent profiles. (With Redis
Cluster, keys would need a hash tag per batch; not supported yet.)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from attributes.errors import StoreError
from attributes.profile import ProfileState

PRIMARY_INDEX = "id"
"""The index name that addresses a profile by its own id, without an index lookup."""

#: (identity type, value)
Identity = tuple[str, str]


def now_ms() -> int:
    """Wall-clock time in ms: a store's default clock."""
    return int(time.time() * 1000)


#: (source name, messageId): an event as its producer names it (retries keep the id)
MessageKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a write publishes once committed (`traitflow.outbox`): to `topic`,
    keyed by `key`; a `value` of None is a tombstone (a compacted topic forgets the key)."""

    topic: str
    key: bytes
    value: bytes | None


def record_value(stamp: str, version: int, record: bytes) -> bytes:
    """What a record document's key holds: the record, after what it was made under
    (a read serves it only if the mapping's stamp and the profile's version match)."""
    return f"{stamp}:{version}:".encode() + record


def record_header(stamp: str, version: bytes | int | None) -> bytes:
    """The start of a record document that a read may serve (`record_value`)."""
    held = version.decode() if isinstance(version, bytes) else str(version or "")
    return f"{stamp}:{held}:".encode()


#: what `ProfileStore.read_records` finds per lookup: (True, the stored record) or
#: (False, the view, to map on the fly); None: no record
Found = tuple[bool, bytes]


#: how long an erase request's status is kept (ms)
ERASURE_STATUS_TTL_MS = 30 * 24 * 3600 * 1000


@dataclass(slots=True)
class Erasure:
    """A write that erases its profile (`attributes.erasure`): every key of it goes,
    tombstones stay, and the request's status says applied, in the same commit."""

    #: the erase request's id (its status key) and the status it gets (JSON)
    request: str
    status: bytes
    #: identity digest -> its tombstone (encoded)
    tombstones: dict[str, bytes]
    #: the profile's identities: their index keys go
    identities: list[Identity]
    #: input partitions whose expiry index may hold the profile
    partitions: list[str]


@dataclass(slots=True)
class ProfileWrite:
    state: ProfileState
    #: `state` encoded, by the caller, so that an unencodable state fails per profile
    encoded_state: bytes
    #: the served view; None deletes it (a profile a source deleted: reads get a 404)
    view: bytes | None
    #: (index, value) pairs that must point at this profile after the write
    identities: list[Identity] = field(default_factory=list)
    #: (input partition, when the profile's windows next change or None): its entry in
    #: that partition's expiry index; None when the rules have no windows
    expiry: tuple[str, int | None] | None = None
    #: the events this write applies, by messageId: remembered for the dedupe window
    messages: list[MessageKey] = field(default_factory=list)
    #: an anonymous-only profile's idle lifetime (ms): its state, view, version and
    #: index keys expire unless written again; None: kept (a write clears any expiry
    #: of the keys it sets)
    ttl_ms: int | None = None
    #: identities whose index keys must lose an expiry they have: a profile that was
    #: anonymous-only and is no longer (its other index keys are set by this write)
    persist: list[Identity] = field(default_factory=list)
    #: the audiences the profile enters and exits by this write (its membership is in
    #: the state and the view): the commit adjusts their sizes by one each
    entered: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    #: audiences of the profiles merged into this one, one entry per membership: those
    #: profiles are deleted by the same commit, which takes them out of the sizes
    departed: list[str] = field(default_factory=list)
    #: (profile id, audience) of merged-away profiles that were expiring: counted apart
    #: (`traitflow.audience_counts`)
    departed_expiring: list[tuple[str, str]] = field(default_factory=list)
    #: the profile was expiring when loaded (anonymous-only): its memberships were
    #: counted among the expiring ones
    was_expiring: bool = False
    #: the counted categories (`traitflow.profile_counts`) the profile enters and exits
    #: by this write, and those of the profiles merged into it (as `departed` and
    #: `departed_expiring` for audiences); its categories after it: `state.counted`
    categories_entered: list[str] = field(default_factory=list)
    categories_exited: list[str] = field(default_factory=list)
    categories_departed: list[str] = field(default_factory=list)
    categories_departed_expiring: list[tuple[str, str]] = field(default_factory=list)
    #: the input partition ("topic/partition") whose batch or expiry round made the
    #: write; its outbox takes the write's messages
    source: str = ""
    #: messages to publish once the write is committed, through `source`'s outbox
    outgoing: list[Outgoing] = field(default_factory=list)
    #: collection -> its record document (`record_value`), for the entity's collections
    #: with a field mapping; None deletes it (no view)
    records: dict[str, bytes | None] = field(default_factory=dict)
    #: the write erases the profile instead of writing it (its state is not stored)
    erasure: Erasure | None = None
    #: the source delete job whose command made the write: its commit counts it
    job: str | None = None
    #: the profiles merged into this one (the commit's `removed` among them): the
    #: spread layout deletes them only if this write commits (`traitflow.spread_plan`)
    absorbed: Sequence[str] = ()


@dataclass(slots=True)
class Expected:
    """What a commit was computed from; it is written only if all of it still holds."""

    #: identity -> the profile it pointed to when read (None: to none)
    pointers: dict[Identity, str | None] = field(default_factory=dict)
    #: profile id -> its version when loaded (None: it did not exist)
    versions: dict[str, int | None] = field(default_factory=dict)
    #: the rules version the writes were computed with (None: not checked)
    rules_version: int | None = None


class Conflict(StoreError):
    """A commit found something changed since it was read; nothing was written.

    It names every check that failed, not only the first, so that the caller can
    compute again just the part of its batch that read them."""

    def __init__(
        self,
        pointers: Collection[Identity] = (),
        profiles: Collection[str] = (),
        committed: Collection[str] = (),
    ):
        self.pointers = frozenset(pointers)
        self.profiles = frozenset(profiles)
        #: the profiles whose writes did commit: on the spread layout a commit is
        #: atomic per bucket, not as a whole (`traitflow.spread_store`); else none
        self.committed = frozenset(committed)
        moved = [f"{index} {value!r} moved" for index, value in sorted(self.pointers)]
        changed = [f"profile {pid!r} changed" for pid in sorted(self.profiles)]
        super().__init__("; ".join([*moved, *changed]) or "nothing named")


class RulesChanged(StoreError):
    """A commit was computed with rules older than the current version
    (`traitflow.rule_catalog`); nothing was written but what `committed` names (the
    spread layout's buckets that found their copy of the version unchanged). The
    worker switches to the current rules and computes the batch again."""

    def __init__(self, computed_with: int, committed: Collection[str] = ()) -> None:
        self.computed_with = computed_with
        #: as `Conflict.committed`: the profiles whose writes did commit (at
        #: `computed_with`) in the buckets that found their rules version unchanged
        self.committed = frozenset(committed)
        super().__init__(f"the rules changed since version {computed_with}")


class ProfileStore(ABC):
    @abstractmethod
    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        """The profile each of `identities` points to, for those that point to one."""

    @abstractmethod
    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        """States of the profiles that exist among `ids`."""

    @abstractmethod
    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        """Those of `messages` applied within the dedupe window."""

    @abstractmethod
    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        """The tombstone (encoded) of each of `identities` that was erased."""

    @abstractmethod
    async def note_erasure(self, request: str, status: bytes) -> None:
        """Keep an erase request's status (JSON) before the worker applies it."""

    @abstractmethod
    async def erasure_status(self, request: str) -> bytes | None:
        """An erase request's status (JSON), or None for an unknown or forgotten one."""

    @abstractmethod
    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        """Write states, views, versions, index keys and the writes' messageIds, and
        delete the profiles in `removed` (merged into others), atomically; raise
        `Conflict` and write nothing if anything in `expected` no longer holds (naming
        all that does not)."""

    async def save(self, entity: str, writes: Sequence[ProfileWrite]) -> None:
        """Write unconditionally (`commit` with nothing expected)."""
        await self.commit(entity, writes)

    @abstractmethod
    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        """The served view of the profile that `index`=`value` points to, or None."""

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        """`read_view` for each (index, value) of `lookups`, in their order.

        This default makes one call per lookup; the stores below answer a batch in one
        go (Redis: one round trip)."""
        return [await self.read_view(entity, index, value) for index, value in lookups]

    async def read_records(
        self, entity: str, lookups: Sequence[tuple[str, str]], *, collection: str, stamp: str
    ) -> list[Found | None]:
        """For each lookup of a collection with a field mapping (its `stamp`): the record
        document written under that mapping for the profile's current version, else the
        profile's view to map; None when no profile with a view is found.

        This default maps every view; the stores below read the documents, in one go."""
        views = await self.read_views(entity, lookups)
        return [None if view is None else (False, view) for view in views]

    @abstractmethod
    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        """(view, encoded state) of the profile each (index, value) points to, in order:
        for reads that recompute part of a view (another merge policy, provenance)."""

    @abstractmethod
    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        """Up to `limit` profiles in `source`'s expiry index due at or before `now`."""

    @abstractmethod
    async def audience_sizes(self, entity: str) -> dict[str, int]:
        """Audience name -> how many of the entity's profiles are in it, as the commits
        kept it (an audience no profile ever entered is absent)."""

    @abstractmethod
    async def profile_counts(self, entity: str) -> dict[str, int]:
        """Counted category -> how many of the entity's profiles are in it, as the
        commits kept it (`traitflow.profile_counts`; a category never entered is
        absent)."""

    @abstractmethod
    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        """Remove profiles from `source`'s expiry index."""

    def abandon(self, entity: str, ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """States loaded for `ids` were modified and will not be saved: forget any copy
        (`traitflow.state_cache.Checkout` says when)."""

    async def ping(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Raise unless the store's backend answers (readiness); nothing to ask in memory."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        pass
