"""A commit as one Lua script: the check and the writes in one atomic step.

A commit must write only if what its batch was computed from still holds (the versions
of the profiles it read, the identity pointers, the rules version: `CommitPlan.checks`).
The script reads those keys and, when every one still holds the value the plan expects,
runs the plan's writes; else it writes nothing and returns what it found, from which
`CommitPlan.conflict` names what changed. Redis runs a script alone, so nothing can
come between its check and its writes.

Why not Redis's optimistic transaction (WATCH the checked keys, MGET and compare them,
then MULTI ... EXEC): Redis 7.0 looks each newly WATCHed key up in the list of keys the
connection already watches, so watching a batch's N keys is N² comparisons on Redis's
only thread, and every read of the API waits behind them (bench/README.md, "Issue 17:
the commit as one script"). It is also three round trips where the script is one.

The script does not know the commands a plan queues: it runs the list it is given
(`CommandList`, which `CommitPlan.queue` fills), so what a commit writes stays in
`traitflow.commit_plan`, tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice

#: arguments of one command at most: the script spreads a command's arguments on
#: Lua's stack, whose limit is a few thousand (a larger MSET or DEL is split)
MAX_ITEMS = 1_000

#: KEYS: the n checked keys, then every key the commands write (declared so that a
#: Redis Cluster sends the script where its slot is, or refuses it whole while the slot
#: migrates). ARGV[1]: n; ARGV[2..n+1]: the value each checked key must have ('' for
#: none). Then the commands, each as its argument count and its arguments. Returns 0
#: once written, or the checked keys' values (false for none) if one differs.
COMMIT = """
local n = tonumber(ARGV[1])
local found = {}
local stale = false
for first = 1, n, 1000 do
  local values = redis.call('MGET', unpack(KEYS, first, math.min(first + 999, n)))
  for j, have in ipairs(values) do
    local i = first + j - 1
    found[i] = have
    if (have or '') ~= ARGV[i + 1] then stale = true end
  end
end
if stale then return found end
local at = n + 2
local last = #ARGV
while at <= last do
  local size = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + size))
  at = at + size + 1
end
return 0
"""

Arg = bytes | str | int | float


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class CommandList:
    """The writes of a commit as the script's arguments: the commands `CommitPlan.queue`
    calls, named as redis-py's pipeline names them, recorded in order."""

    def __init__(self) -> None:
        self.args: list[Arg] = []
        self.count = 0
        #: every key the commands write, declared to Redis with the checked ones
        self.keys: dict[str, None] = {}

    def _command(self, keys: Iterable[str], *args: Arg) -> None:
        self.keys.update(dict.fromkeys(keys))
        self.args.append(len(args))
        self.args.extend(args)
        self.count += 1

    def mset(self, mapping: Mapping[str, bytes | str]) -> None:
        for chunk in _chunks(mapping, MAX_ITEMS):
            self._command(chunk, "MSET", *(a for key in chunk for a in (key, mapping[key])))

    def delete(self, *names: str) -> None:
        for chunk in _chunks(names, MAX_ITEMS):
            self._command(chunk, "DEL", *chunk)

    def zadd(self, name: str, mapping: Mapping[str, int | float]) -> None:
        for chunk in _chunks(mapping, MAX_ITEMS):
            self._command([name], "ZADD", name, *(a for m in chunk for a in (mapping[m], m)))

    def zrem(self, name: str, *values: str) -> None:
        for chunk in _chunks(values, MAX_ITEMS):
            self._command([name], "ZREM", name, *chunk)

    def sadd(self, name: str, *values: str) -> None:
        for chunk in _chunks(values, MAX_ITEMS):
            self._command([name], "SADD", name, *chunk)

    def pexpire(self, name: str, milliseconds: int) -> None:
        self._command([name], "PEXPIRE", name, milliseconds)

    def pexpireat(self, name: str, when_ms: int) -> None:
        self._command([name], "PEXPIREAT", name, when_ms)

    def persist(self, name: str) -> None:
        self._command([name], "PERSIST", name)

    def hincrby(self, name: str, key: str, amount: int = 1) -> None:
        self._command([name], "HINCRBY", name, key, amount)

    def xadd(self, name: str, fields: Mapping[bytes, bytes]) -> None:
        self._command([name], "XADD", name, "*", *(a for pair in fields.items() for a in pair))

    def zremrangebyscore(self, name: str, low: str | int, high: str | int) -> None:
        self._command([name], "ZREMRANGEBYSCORE", name, low, high)


def script_arguments(
    checks: Mapping[str, bytes], commands: CommandList
) -> tuple[list[str], list[Arg]]:
    """KEYS and ARGV of `COMMIT` for `checks` (key -> the value it must have, b'' for
    none) and the writes in `commands`."""
    return [*checks, *commands.keys], [len(checks), *checks.values(), *commands.args]


def found_values(reply: int | Sequence[bytes | None]) -> list[bytes | None] | None:
    """None if the script wrote; else the checked keys' values it found."""
    if isinstance(reply, int):
        return None
    return [value if value else None for value in reply]
