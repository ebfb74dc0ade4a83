"""The API's reads on the spread layout (`traitflow.spread_store`): one round trip when
each lookup is by profile id, by the identity its profile was made from, or by an
identity whose pointer the API has cached; two when a pointer names a profile in
another bucket and is not cached (or its cached guess failed its check: three).

Why that split: a pointer is in the bucket of the profile made from its identity
(`traitflow.spread_layout`), so a read by a user's `user_id` finds the pointer and
the view in one slot, and one script does both, as on one Redis. A read by an identity
linked later (an email, an anonymous id merged into the user) finds the pointer in one
slot and the profile in another: the script returns the profile id, and its keys are
read in a second round trip. The API remembers that id (`traitflow.spread_pointers`)
and next time reads the profile's bucket directly, checking in the same read that the
profile still holds the identity. Each round is one pipeline over every node at once,
whatever the number of lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from traitflow.key_layout import KeyLayout
from traitflow.spread_layout import SpreadLayout
from traitflow.spread_pointers import PointerCache, validates
from traitflow.store import PRIMARY_INDEX, Found, record_header

#: KEYS: pointers of one slot; ARGV[1]: n, ARGV[2..n+1]: prefixes of the keys to read
#: of a profile in that slot, then the identity value of each pointer. Per pointer:
#: false if it points nowhere; {1, value per prefix} if it names the profile made from
#: its value (so in this slot: `made_from`); else {0, the profile id}. A claimed
#: pointer (`traitflow.spread_claims`) is read as its old value.
READ_MADE_FROM = """
local n = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local id = redis.call('GET', key)
  if id and string.byte(id, 1) == 0 then
    id = string.match(id, '^%z[cl]:[^:]*:%-?%d+:%-?%d+:(.*)$')
    if id == '' then id = nil end
  end
  if not id then
    out[i] = false
  else
    local made = string.match(id, '^[^:]*:(.*)$') or id
    if made == ARGV[n + 1 + i] then
      local found = {1}
      for p = 2, n + 1 do found[p] = redis.call('GET', ARGV[p] .. id) end
      out[i] = found
    else
      out[i] = {0, id}
    end
  end
end
return out
"""

#: the key prefixes of what a read wants of a profile, in a bucket's layout
Wanted = Callable[[KeyLayout], list[str]]


class SpreadReads:
    layout: SpreadLayout
    #: the API's pointer cache (`traitflow.spread_pointers`); None: every read by a
    #: linked identity reads its pointer (the worker's store, tests of that path)
    pointers: PointerCache | None = None

    async def _run(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        raise NotImplementedError

    async def _read(
        self, entity: str, lookups: Sequence[tuple[str, str]], wanted: Wanted
    ) -> list[list[bytes | None] | None]:
        """Per lookup, the values of `wanted`'s keys of the profile it finds, or None.

        Round one: by id, by a cached pointer (its guess checked: `validates`), and by
        pointer for the rest; round two, only if needed: by pointer for the guesses
        that failed; then the profiles the pointers named elsewhere."""
        answers: list[list[bytes | None] | None] = [None] * len(lookups)
        cache = self.pointers
        guesses: dict[int, str] = {}
        if cache is not None:
            for n, (index, value) in enumerate(lookups):
                if index != PRIMARY_INDEX and (pid := cache.get(entity, index, value)):
                    guesses[n] = pid
        rest = [n for n in range(len(lookups)) if n not in guesses]
        calls, asked = self._by_pointer(entity, lookups, rest, wanted)
        for pid in guesses.values():
            keys = self.layout.of_profile(entity, pid)
            checked = (keys.view(entity, pid), keys.version(entity, pid))
            calls.append(("MGET", *(prefix + pid for prefix in wanted(keys)), *checked))
        replies = await self._run(calls)
        elsewhere = _found(lookups, asked, replies[: len(asked)], answers)
        failed: list[int] = []
        for n, reply in zip(guesses, replies[len(asked) :], strict=True):
            *values, view, version = reply
            if validates(view, version, *lookups[n]):
                answers[n] = list(values)
            else:
                failed.append(n)
                if cache is not None:
                    cache.forget(entity, *lookups[n])
        if failed:
            calls, asked = self._by_pointer(entity, lookups, failed, wanted)
            elsewhere |= _found(lookups, asked, await self._run(calls), answers)
        if elsewhere:
            layout = self.layout
            pids = list(dict.fromkeys(elsewhere.values()))
            second = [
                ("MGET", *(p + pid for p in wanted(layout.of_profile(entity, pid)))) for pid in pids
            ]
            of = dict(zip(pids, await self._run(second), strict=True))
            for n, pid in elsewhere.items():
                answers[n] = list(of[pid])
                if cache is not None and any(value is not None for value in of[pid]):
                    cache.put(entity, *lookups[n], pid)
        return answers

    def _by_pointer(
        self, entity: str, lookups: Sequence[tuple[str, str]], ns: Sequence[int], wanted: Wanted
    ) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
        """The calls that read lookups `ns` by id or by pointer (`READ_MADE_FROM`, one
        per bucket), and the lookups each call answers."""
        layout = self.layout
        calls: list[tuple[Any, ...]] = []
        asked: list[list[int]] = []  # the lookups of each call; by id: one
        by_bucket: dict[int, list[int]] = {}
        for n in ns:
            index, value = lookups[n]
            if index == PRIMARY_INDEX:
                keys = layout.keys(layout.profile_bucket(entity, value))
                calls.append(("MGET", *(prefix + value for prefix in wanted(keys))))
                asked.append([n])
            else:
                by_bucket.setdefault(layout.identity_bucket(entity, index, value), []).append(n)
        for bucket, group in by_bucket.items():
            keys = layout.keys(bucket)
            prefixes = wanted(keys)
            pointers = [keys.index(entity, *lookups[n]) for n in group]
            values = [lookups[n][1] for n in group]
            calls.append(
                ("EVAL", READ_MADE_FROM, len(group), *pointers, len(prefixes), *prefixes, *values)
            )
            asked.append(group)
        return calls, asked

    async def read_view(self, entity: str, index: str, value: str) -> bytes | None:
        return (await self.read_views(entity, [(index, value)]))[0]

    async def read_views(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        found = await self._read(entity, lookups, lambda k: [k.view_prefix(entity)])
        return [None if values is None else values[0] for values in found]

    async def read_profiles(
        self, entity: str, lookups: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes] | None]:
        found = await self._read(
            entity, lookups, lambda k: [k.view_prefix(entity), k.state_prefix(entity)]
        )
        pairs: list[tuple[bytes, bytes] | None] = []
        for values in found:
            view, state = values if values is not None else (None, None)
            pairs.append(None if view is None or state is None else (view, state))
        return pairs

    async def read_records(
        self, entity: str, lookups: Sequence[tuple[str, str]], *, collection: str, stamp: str
    ) -> list[Found | None]:
        """A record document written under this mapping for the profile's current
        version; else the view, to be mapped (`store.record_value`)."""

        def wanted(keys: KeyLayout) -> list[str]:
            versions = KeyLayout(keys.prefix).version(entity, "")
            return [keys.record_prefix(entity, collection), versions, keys.view_prefix(entity)]

        answers: list[Found | None] = []
        for values in await self._read(entity, lookups, wanted):
            record, version, view = values if values is not None else (None, None, None)
            header = record_header(stamp, version)
            if record is not None and record.startswith(header):
                answers.append((True, record[len(header) :]))
            else:
                answers.append(None if view is None else (False, view))
        return answers


def _found(
    lookups: Sequence[tuple[str, str]],
    asked: Sequence[list[int]],
    replies: Sequence[Any],
    answers: list[list[bytes | None] | None],
) -> dict[int, str]:
    """Fill `answers` from the replies of `_by_pointer`'s calls; the lookups whose
    pointer named a profile in another bucket, with its id."""
    elsewhere: dict[int, str] = {}
    for ns, reply in zip(asked, replies, strict=True):
        if lookups[ns[0]][0] == PRIMARY_INDEX:
            answers[ns[0]] = list(reply)
            continue
        for n, found in zip(ns, reply, strict=True):
            if found and int(found[0]) == 1:
                answers[n] = list(found[1:])
            elif found:
                elsewhere[n] = found[1].decode()
    return elsewhere
