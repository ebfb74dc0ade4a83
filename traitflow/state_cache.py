"""The states a worker keeps between batches, and who may change them.

`CachedProfileStore` keeps the decoded states this worker wrote, so that the next batch
of the same profiles costs neither a round trip nor a decode. It hands out the very
objects it keeps, and the processor changes them in place (copying every state per
batch would cost what the cache saves). `Checkout` is the rule that makes that safe,
stated once: a state belongs to the computation that loaded it until a commit writes
it, and one it did not commit (a conflict, a failure, a bug, a dead-lettered event) is
dropped from the cache when the computation ends, wherever it stopped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from attributes.profile import ProfileState
from traitflow.store import Expected, Identity, MessageKey, ProfileStore, ProfileWrite


class Checkout:
    """The states one computation took from `store` (entity `entity`), until it ends.

    Use it as an async context manager around one attempt at a batch (read, compute,
    commit): `load` and `reload` hand out states, `commit` writes some of them, and
    leaving the block hands every state loaded and not committed to
    `ProfileStore.abandon` and to `forget` (what the caller remembers about those
    state objects), so that the next load reads what is stored. A store that keeps
    nothing ignores `abandon`: the rule costs nothing there."""

    def __init__(
        self,
        store: ProfileStore,
        entity: str,
        *,
        forget: Callable[[Sequence[str]], None] | None = None,
        rules_version: int | None = None,
    ) -> None:
        self.store = store
        self.entity = entity
        self._forget = forget
        #: the rules version its states are computed with: every commit is refused if
        #: the rules changed since (`traitflow.store.RulesChanged`); None: not checked
        self.rules_version = rules_version
        #: ids of the states handed out and not committed since
        self._held: set[str] = set()

    async def load(self, ids: Sequence[str]) -> dict[str, ProfileState]:
        """States of the profiles that exist among `ids` (`ProfileStore.load`)."""
        states = await self.store.load(self.entity, ids)
        self._held.update(states)
        return states

    async def reload(self, pid: str) -> ProfileState | None:
        """The stored state of `pid`, not the one this checkout may have changed."""
        self._drop([pid])
        return (await self.load([pid])).get(pid)

    async def commit(
        self,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        """`ProfileStore.commit`, at this checkout's rules version; what it wrote (or
        deleted) is the store's again."""
        if self.rules_version is not None:
            expected = expected or Expected()
            expected.rules_version = self.rules_version
        await self.store.commit(self.entity, writes, removed=removed, expected=expected)
        self._held.difference_update(write.state.id for write in writes)
        self._held.difference_update(removed)

    def close(self) -> None:
        """Drop what was handed out and not committed; a checkout can be used again."""
        self._drop(self._held)

    def _drop(self, ids: Iterable[str]) -> None:
        dropped = list(ids)
        self._held.difference_update(dropped)
        if dropped:
            self.store.abandon(self.entity, dropped)
            if self._forget is not None:
                self._forget(dropped)

    async def __aenter__(self) -> Checkout:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class CachedProfileStore(ProfileStore):
    """Keeps the decoded states this worker wrote, in front of another store.

    Loads of cached profiles cost neither a round trip nor a decode. A cached state
    may be stale, when another worker wrote the profile since (stitching sends one
    person's events through several partitions): the commit's version check
    (`Expected`) catches that, and the computation's `Checkout` drops the entries it
    did not commit before the batch is computed again. The cache is also cleared when
    partitions move (`clear()` on every rebalance), and entries of a failed write are
    dropped: `apply_event` mutates cached states in place, so a state whose write failed
    is ahead of the store, and a retried batch would find its offsets already applied
    and never write them.
    """

    def __init__(self, inner: ProfileStore, max_profiles: int) -> None:
        self.inner = inner
        self.max_profiles = max_profiles
        self._states: OrderedDict[tuple[str, str], ProfileState] = OrderedDict()

    def clear(self) -> None:
        self._states.clear()

    def abandon(self, entity: str, ids: Sequence[str]) -> None:
        for pid in ids:
            self._states.pop((entity, pid), None)

    def __len__(self) -> int:
        return len(self._states)

    async def load(self, entity: str, ids: Sequence[str]) -> dict[str, ProfileState]:
        found: dict[str, ProfileState] = {}
        missing: list[str] = []
        for pid in ids:
            state = self._states.get((entity, pid))
            if state is None:
                missing.append(pid)
            else:
                self._states.move_to_end((entity, pid))
                found[pid] = state
        if missing:
            found.update(await self.inner.load(entity, missing))
        return found

    async def lookup(self, entity: str, identities: Sequence[Identity]) -> dict[Identity, str]:
        return await self.inner.lookup(entity, identities)

    async def applied(self, entity: str, messages: Sequence[MessageKey]) -> set[MessageKey]:
        return await self.inner.applied(entity, messages)

    async def note_erasure(self, request: str, status: bytes) -> None:
        await self.inner.note_erasure(request, status)

    async def erasure_status(self, request: str) -> bytes | None:
        return await self.inner.erasure_status(request)

    async def tombstones(
        self, entity: str, identities: Sequence[Identity]
    ) -> dict[Identity, bytes]:
        return await self.inner.tombstones(entity, identities)

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        *,
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        self.abandon(entity, removed)
        try:
            await self.inner.commit(entity, writes, removed=removed, expected=expected)
        except BaseException:
            self.abandon(entity, [write.state.id for write in writes])
            raise
        for write in writes:
            if write.erasure is not None:  # nothing of it is stored any more
                self._states.pop((entity, write.state.id), None)
                continue
            self._states[(entity, write.state.id)] = write.state
            self._states.move_to_end((entity, write.state.id))
        while len(self._states) > self.max_profiles:
            self._states.popitem(last=False)

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        return await self.inner.read_view(entity, index, value)

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        return await self.inner.read_views(entity, lookups)

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        return await self.inner.read_profiles(entity, lookups)

    async def due(self, entity: str, source: str, *, now: int, limit: int) -> list[str]:
        return await self.inner.due(entity, source, now=now, limit=limit)

    async def audience_sizes(self, entity: str) -> dict[str, int]:
        return await self.inner.audience_sizes(entity)

    async def profile_counts(self, entity: str) -> dict[str, int]:
        return await self.inner.profile_counts(entity)

    async def unschedule(self, entity: str, source: str, ids: Sequence[str]) -> None:
        await self.inner.unschedule(entity, source, ids)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
