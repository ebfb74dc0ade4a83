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

The same machinery counts profiles per entity, source and identity namespace
(`traitflow.profile_counts`): a profile is "in" the categories it is counted in, as
it is in audiences, and `SizeChanges` is told which of the two a write's names are
(`of`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from traitflow.resp import RespClient, Script

if TYPE_CHECKING:
    from traitflow.store import ProfileWrite

#: what a write does to one kind of count: the names the profile is in after it, those
#: it enters, those it exits, those of the kept profiles merged into it (one per
#: membership), and (profile, name) of the expiring ones merged into it
Moves = tuple[Sequence[str], Sequence[str], Sequence[str], Sequence[str], Sequence[tuple[str, str]]]


def audience_moves(write: ProfileWrite) -> Moves:
    """A write's audience memberships (`ProfileWrite.entered`, ...)."""
    return (
        write.state.audiences,
        write.entered,
        write.exited,
        write.departed,
        write.departed_expiring,
    )


@dataclass(slots=True)
class SizeChanges:
    """What a commit does to the sizes of one entity's audiences (or, `of` another
    kind of names, of its other counts)."""

    #: audience -> change of its count of kept members (entries that cancel out: none)
    kept: dict[str, int] = field(default_factory=dict)
    #: audience -> {profile id: when its keys expire (ms)}: expiring members to count,
    #: or whose deadline moves
    expiring: dict[str, dict[str, int]] = field(default_factory=dict)
    #: audience -> profiles no longer counted among its expiring members
    dropped: dict[str, list[str]] = field(default_factory=dict)
    #: which names of a write are counted: its audiences, or other categories
    of: Callable[[ProfileWrite], Moves] = field(default=audience_moves, compare=False, repr=False)

    def add(self, write: ProfileWrite, now_ms: int) -> None:
        """Count the change `write` makes; its keys expire at `now_ms + ttl_ms`."""
        pid = write.state.id
        after, entered, exited, departed, departed_expiring = self.of(write)
        for name in departed:
            self._kept(name, -1)
        for gone, name in departed_expiring:
            self.dropped.setdefault(name, []).append(gone)
        if not write.was_expiring and write.ttl_ms is None:  # the usual write
            for name in entered:
                self._kept(name, 1)
            for name in exited:
                self._kept(name, -1)
            return
        before = {*after, *exited}.difference(entered)
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


def size_changes(
    writes: Iterable[ProfileWrite],
    now_ms: int,
    of: Callable[[ProfileWrite], Moves] = audience_moves,
) -> SizeChanges:
    """What the commit of `writes` does to the sizes of their entity's audiences (or
    the counts `of` names)."""
    changes = SizeChanges(of=of)
    for write in writes:
        changes.add(write, now_ms)
    return changes


# An entity's sizes: its kept counts, then each name with expiring members and how many
# of them have a deadline after ARGV[2]. Pairs of name and count, a name maybe twice.
SIZES = Script.of("""
local out = redis.call('HGETALL', KEYS[1])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    out[#out + 1] = name
    out[#out + 1] = redis.call('ZCOUNT', ARGV[1] .. name, ARGV[2], '+inf')
end
return out
""")


async def read_sizes(
    reads: RespClient, kept: str, expiring: tuple[str, str], now_ms: int
) -> dict[str, int]:
    """Name -> size, in one script: the counts in hash `kept`, plus the members not yet
    due (deadline after `now_ms`) of each name in set `expiring[0]`, whose members are
    in the sorted set `expiring[1]` + name."""
    names, member_prefix = expiring
    reply = await reads.eval(SIZES, [kept, names], [member_prefix, f"({now_ms}"])
    pairs = cast("list[bytes]", reply or [])
    sizes: dict[str, int] = {}
    for name, size in zip(pairs[::2], pairs[1::2], strict=True):
        sizes[name.decode()] = sizes.get(name.decode(), 0) + int(size)
    return sizes
