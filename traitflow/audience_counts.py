"""How a commit changes the sizes of audiences, kept without scanning.

A profile that is kept for good counts in a plain number per audience (HINCRBY): it
leaves only by a write, which says so (`ProfileWrite.exited`, `departed`). An
anonymous-only profile is different: it expires when idle, and Redis deletes its keys
with no write that could take it out of a count. So its memberships are counted
apart, each with the deadline its keys were given: the audience's size is the kept
number plus its expiring members whose deadline has not passed. A write that stops a
profile expiring (a link to a known identity) moves its memberships from the second
count to the first; a merge that deletes a profile takes it out of whichever count
held it.

Two counts rather than one set of members with a deadline (forever for kept
profiles): a kept profile's write, the usual one, changes a number only when the
membership changes, not one set entry per membership on every write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from traitflow.store import ProfileWrite


@dataclass(slots=True)
class SizeChanges:
    """What a commit does to the sizes of one entity's audiences."""

    #: audience -> change of its count of kept members (entries that cancel out: none)
    kept: dict[str, int] = field(default_factory=dict)
    #: audience -> {profile id: when its keys expire (ms)}: expiring members to count,
    #: or whose deadline moves
    expiring: dict[str, dict[str, int]] = field(default_factory=dict)
    #: audience -> profiles no longer counted among its expiring members
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def add(self, write: ProfileWrite, now_ms: int) -> None:
        """Count the change `write` makes; its keys expire at `now_ms + ttl_ms`."""
        pid = write.state.id
        for name in write.departed:
            self._kept(name, -1)
        for gone, name in write.departed_expiring:
            self.dropped.setdefault(name, []).append(gone)
        if not write.was_expiring and write.ttl_ms is None:  # the usual write
            for name in write.entered:
                self._kept(name, 1)
            for name in write.exited:
                self._kept(name, -1)
            return
        after = write.state.audiences
        before = {*after, *write.exited}.difference(write.entered)
        if write.ttl_ms is None:  # stops expiring: its memberships move to the kept count
            for name in before:
                self.dropped.setdefault(name, []).append(pid)
            for name in after:
                self._kept(name, 1)
            return
        if not write.was_expiring:  # a profile does not start expiring; if it did, moved
            for name in before:
                self._kept(name, -1)
        deadline = now_ms + write.ttl_ms
        for name in after:
            self.expiring.setdefault(name, {})[pid] = deadline
        for name in before.difference(after):
            self.dropped.setdefault(name, []).append(pid)

    def _kept(self, name: str, change: int) -> None:
        total = self.kept.get(name, 0) + change
        if total:
            self.kept[name] = total
        else:
            self.kept.pop(name, None)

    def touched(self) -> set[str]:
        """Audiences whose expiring members this commit adds, moves or drops."""
        return {*self.expiring, *self.dropped}


def size_changes(writes: Iterable[ProfileWrite], now_ms: int) -> SizeChanges:
    """What the commit of `writes` does to the sizes of their entity's audiences."""
    changes = SizeChanges()
    for write in writes:
        changes.add(write, now_ms)
    return changes
