"""How a processor's start notes are written (`tf:rs:{partition}`, `streams.
rule_versions`): the Lua script `start_notes` runs on Redis, and `MemoryStartNotes`,
the same rules on a dict, for the tests.

One script per partition, so that the note of the partition's start at a version and
what it says of the offsets past it are one atomic step: the offsets a redelivered
batch found already applied are noted only by the processor whose start note took
effect (`RuleVersions._note_starts` says why that makes them exact).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

#: KEYS[1]: the partition's notes. ARGV: the version; the start offset ("" when the
#: caller's start note took effect before); how many `also` pairs follow (field tail
#: "{entity}:{older}", offsets); then pairs (entity, offsets) of redelivered records.
#: Returns 1 if the start note is the caller's. Offsets are comma separated; a field
#: noted again gets the new offsets appended (read as a set: `committed_before`).
NOTE = """
local key, v = KEYS[1], tonumber(ARGV[1])
local function append(field, offsets)
  local was = redis.call('HGET', key, field)
  if was then offsets = was .. ',' .. offsets end
  redis.call('HSET', key, field, offsets)
end
local taken = 1
if ARGV[2] ~= '' then taken = redis.call('HSETNX', key, ARGV[1], ARGV[2]) end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  append(ARGV[1] .. ':' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
if taken == 0 or i > #ARGV then return taken end
local starts, flat = {}, redis.call('HGETALL', key)
for k = 1, #flat, 2 do
  if string.match(flat[k], '^%d+$') and tonumber(flat[k]) < v then
    starts[#starts + 1] = {tonumber(flat[k]), tonumber(flat[k + 1])}
  end
end
while i <= #ARGV do
  local groups = {}
  for o in string.gmatch(ARGV[i + 1], '%d+') do
    local at, u = tonumber(o), 0
    for _, s in ipairs(starts) do
      if s[2] <= at and s[1] > u then u = s[1] end
    end
    groups[u] = groups[u] and (groups[u] .. ',' .. o) or o
  end
  for u, offsets in pairs(groups) do append(ARGV[1] .. ':' .. ARGV[i] .. ':' .. u, offsets) end
  i = i + 2
end
return taken
"""


def note_args(
    version: int,
    start: int | None,
    also: Mapping[str, Sequence[int]],
    redelivered: Mapping[str, Sequence[int]],
) -> list[str]:
    """`NOTE`'s ARGV."""
    args = [str(version), "" if start is None else str(start), str(len(also))]
    for older, offsets in also.items():
        args += [older, ",".join(map(str, offsets))]
    for entity, offsets in redelivered.items():
        args += [entity, ",".join(map(str, offsets))]
    return args


def older_start(notes: Mapping[str, str], version: int, offset: int) -> int:
    """The newest version below `version` whose start is noted at or before `offset`
    (0 if none): the version a record at `offset` that was applied before `version`'s
    start note was applied at, or a newer one (`NOTE` computes it the same way)."""
    found = [
        int(name)
        for name, start in notes.items()
        if name.isdigit() and int(name) < version and int(start) <= offset
    ]
    return max(found, default=0)


class MemoryStartNotes:
    """`NoteStart` on dicts (partition -> its notes), as `NOTE` does it on Redis."""

    def __init__(self) -> None:
        self.notes: dict[str, dict[str, str]] = {}

    async def __call__(
        self,
        version: int,
        firsts: Mapping[str, int],
        also: Mapping[str, Mapping[str, Sequence[int]]],
        redelivered: Mapping[str, Mapping[str, Sequence[int]]],
    ) -> Collection[str]:
        taken: set[str] = set()
        for partition in {*firsts, *redelivered}:
            notes = self.notes.setdefault(partition, {})
            start = firsts.get(partition)
            if start is not None and str(version) not in notes:
                notes[str(version)] = str(start)
                taken.add(partition)
            for older, offsets in also.get(partition, {}).items():
                self._append(notes, f"{version}:{older}", offsets)
            if start is not None and partition not in taken:
                continue
            for entity, offsets in redelivered.get(partition, {}).items():
                groups: dict[int, list[int]] = {}
                for offset in offsets:
                    groups.setdefault(older_start(notes, version, offset), []).append(offset)
                for u, group in groups.items():
                    self._append(notes, f"{version}:{entity}:{u}", group)
        return taken

    @staticmethod
    def _append(notes: dict[str, str], field: str, offsets: Sequence[int]) -> None:
        joined = ",".join(map(str, offsets))
        notes[field] = f"{notes[field]},{joined}" if field in notes else joined
