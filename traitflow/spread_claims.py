"""Claims, locks and intents: how a commit of the spread layout changes keys of
several slots and keeps today's guarantees (docs/redis-cluster.md, option B, protocol
"claims, then commit, then finalize").

A commit that links identities or merges profiles writes keys of other slots than its
profile's bucket: identity pointers, the merged profiles. Redis Cluster cannot make
that one atomic step, so the commit is three:

1. claim: each pointer it will set or relies on is claimed with a single-key
   compare-and-set (`CLAIM`), and each profile it merges away is locked the same way on
   its version key. The claim is written into the key itself, in front of the value it
   replaces (`held_value`): a reader takes a claimed key for its old value, a writer
   that meets it conflicts (or, if its lease is over, recovers it). A claim that finds
   its key changed is today's `Conflict`.
2. commit: each bucket's writes as one single-slot script, as on a single Redis, with
   the bucket's **intent** in the same script: the steps that finish it (`Op`s).
3. finalize: run the intents' steps (`FINALIZE`, one script per slot): pointers take
   their new value, merged profiles are deleted, claims of a bucket that did not commit
   are released. Then the intents are dropped.

Why an intent decides: a worker that dies between the steps leaves claims. Whoever
meets one whose lease is over asks the bucket that owns it (`DECIDE`): an intent there
means the bucket committed, so its steps are run (roll forward); none means it did not,
and `DECIDE` writes an "aborted" intent in its place, which the bucket's commit checks
is absent, so a slow worker cannot commit after its claims were released (roll back).
Every step is conditional on the claim still being the commit's own, so running one
twice (the owner and a recovery) does it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from traitflow.commit_script import Arg
from traitflow.spread_nodes import keys_here

#: what starts a claimed pointer and a locked version: a byte no id starts with
CLAIMED = b"\x00c:"
LOCKED = b"\x00l:"
#: the value `DECIDE` leaves where the intent of a commit that did not happen would be
ABORTED = b"aborted"

#: one step of finishing or undoing a commit: (kind, key, arguments...)
Op = tuple[Arg, ...]


def new_commit_id() -> str:
    return uuid.uuid4().hex[:16]


def mark(kind: bytes, commit: str) -> bytes:
    """What every value a commit holds starts with (a claim or a lock)."""
    return kind + commit.encode() + b":"


def held_value(kind: bytes, commit: str, deadline: int, owner: int) -> bytes:
    """A claim's value without the old value the script appends: its commit, when its
    lease ends (epoch ms), the bucket whose intent decides it (-1: none, a claim kept
    as it is either way)."""
    return mark(kind, commit) + f"{deadline}:{owner}:".encode()


@dataclass(frozen=True, slots=True)
class Held:
    """A claimed or locked key's value, decoded."""

    kind: bytes
    commit: str
    deadline: int
    owner: int
    #: the value it replaced ('' for none): what readers take the key for
    old: bytes


def held(value: bytes | None) -> Held | None:
    """The claim or lock `value` is, or None for a plain value."""
    if not value or value[:1] != b"\x00":
        return None
    kind, rest = value[:3], value[3:]
    commit, deadline, owner, old = rest.split(b":", 3)
    return Held(kind, commit.decode(), int(deadline), int(owner), old)


def plain(value: bytes | None) -> bytes | None:
    """What a reader takes `value` for: a claimed key's old value (None for none)."""
    found = held(value)
    if found is None:
        return value
    return found.old or None


# --- steps (`Op`) -------------------------------------------------------------------
# Each names its key second: `FINALIZE` runs the steps of one slot, and a step is sent
# to the slot of its key.


def point(key: str, commit: str, value: str) -> Op:
    """Set the pointer the commit claimed."""
    return ("POINT", key, mark(CLAIMED, commit), value)


def release(key: str, commit: str) -> Op:
    """Give a claimed key back its old value."""
    return ("RELEASE", key, mark(CLAIMED, commit))


def drop(version_key: str, commit: str, keys: Sequence[str]) -> Op:
    """Delete a profile the commit locked (its version key) and merged away."""
    return ("DROP", version_key, mark(LOCKED, commit), *keys)


def unlock(version_key: str, commit: str) -> Op:
    return ("UNLOCK", version_key, mark(LOCKED, commit))


def set_value(key: str, value: bytes | str, ttl_ms: int | None = None) -> Op:
    if ttl_ms is None:
        return ("SET", key, value)
    return ("SETPX", key, value, ttl_ms)


def delete_if(key: str, value: str) -> Op:
    """Delete a pointer if it still points at `value` (an erased profile's)."""
    return ("DELIF", key, value)


def expire_if(key: str, value: str, ttl_ms: int) -> Op:
    return ("PEXPIREIF", key, value, ttl_ms)


def persist_if(key: str, value: str) -> Op:
    return ("PERSISTIF", key, value)


def uncount(key: str, profile_ids: Sequence[str]) -> Op:
    """Take profiles out of an expiring-members set (`traitflow.audience_counts`)."""
    return ("ZREM", key, *profile_ids)


def remember(key: str, gone_at: int, message_ids: Sequence[str]) -> Op:
    """Add applied messageIds to a dedupe set that expires at `gone_at` (epoch ms)."""
    return ("SADD", key, gone_at, *message_ids)


def encode_intent(ops: Sequence[Op]) -> bytes:
    return msgspec.msgpack.encode(ops)


def decode_intent(raw: bytes) -> list[Op]:
    return [tuple(op) for op in msgspec.msgpack.decode(raw)]


def op_keys(op: Op) -> list[str]:
    """The keys a step touches (declared to Redis): its key, and a DROP's others."""
    key = str(op[1])
    return [key, *(str(k) for k in op[3:])] if op[0] == "DROP" else [key]


def finalize_arguments(ops: Iterable[Op]) -> tuple[list[str], list[Arg]]:
    """KEYS and ARGV of `FINALIZE` for steps of one slot."""
    keys: dict[str, None] = {}
    args: list[Arg] = []
    for op in ops:
        keys.update(dict.fromkeys(op_keys(op)))
        args.append(len(op))
        args.extend(op)
    return list(keys), args


#: KEYS[1]: the key to claim. ARGV[1]: '1' to check its value, ARGV[2] the value it
#: must have ('' for none), ARGV[3] the claim (`held_value`), to which the old value is
#: appended. Returns {0, ''} once claimed; {1, value} if another commit holds it;
#: {2, value} if it has changed. KEEPTTL: an expiring pointer keeps its lifetime.
_CLAIM_ONE = """
local function claim(key, check, want, value)
  local have = redis.call('GET', key)
  if have and string.byte(have, 1) == 0 then return {1, have} end
  if check == '1' and (have or '') ~= want then return {2, have or ''} end
  redis.call('SET', key, value .. (have or ''), 'KEEPTTL')
  return {0, ''}
end
"""
CLAIM = _CLAIM_ONE + "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"

#: `CLAIM` for every key a node serves (`traitflow.spread_nodes`), ARGV four per key
#: (the key, then CLAIM's three). Every key is touched first: if one is not on this
#: node the script returns {'moved'} having claimed nothing; else one reply per key.
CLAIM_ON_NODE = (
    "#!lua flags=allow-cross-slot-keys\n"
    + _CLAIM_ONE
    + keys_here(1, 4)
    + """local out = {}
for i = 1, #ARGV, 4 do
  out[#out + 1] = claim(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
return out
"""
)

#: The steps of one slot (`finalize_arguments`): each is its argument count, then
#: kind, key and arguments. A step on a claim or lock runs only while the key holds
#: the commit's own (its mark, ARGV of the step's third place).
FINALIZE = """
local at = 1
local last = #ARGV
while at <= last do
  local size = tonumber(ARGV[at])
  local kind, key = ARGV[at + 1], ARGV[at + 2]
  if kind == 'POINT' or kind == 'RELEASE' or kind == 'DROP' or kind == 'UNLOCK' then
    local mark = ARGV[at + 3]
    local have = redis.call('GET', key)
    if have and string.sub(have, 1, #mark) == mark then
      if kind == 'POINT' then
        redis.call('SET', key, ARGV[at + 4], 'KEEPTTL')
      elseif kind == 'DROP' then
        redis.call('DEL', key)
        if size > 3 then redis.call('DEL', unpack(ARGV, at + 4, at + size)) end
      else
        local old = string.match(string.sub(have, #mark + 1), '^%d+:%-?%d+:(.*)$')
        if old == nil or old == '' then redis.call('DEL', key)
        else redis.call('SET', key, old, 'KEEPTTL') end
      end
    end
  elseif kind == 'SET' then
    redis.call('SET', key, ARGV[at + 3])
  elseif kind == 'SETPX' then
    redis.call('SET', key, ARGV[at + 3], 'PX', ARGV[at + 4])
  elseif kind == 'DELIF' then
    if redis.call('GET', key) == ARGV[at + 3] then redis.call('DEL', key) end
  elseif kind == 'PEXPIREIF' then
    if redis.call('GET', key) == ARGV[at + 3] then redis.call('PEXPIRE', key, ARGV[at + 4]) end
  elseif kind == 'PERSISTIF' then
    if redis.call('GET', key) == ARGV[at + 3] then redis.call('PERSIST', key) end
  elseif kind == 'ZREM' then
    redis.call('ZREM', key, unpack(ARGV, at + 3, at + size))
  elseif kind == 'SADD' then
    redis.call('SADD', key, unpack(ARGV, at + 4, at + size))
    redis.call('PEXPIREAT', key, ARGV[at + 3])
  else
    return redis.error_reply('unknown step ' .. kind)
  end
  at = at + size + 1
end
return 0
"""

#: `FINALIZE` over the steps of every slot its node serves (`traitflow.spread_nodes`),
#: run again slot by slot if it stops part way: every step does nothing twice
FINALIZE_ON_NODE = "#!lua flags=allow-cross-slot-keys\n" + FINALIZE

#: KEYS[1]: a commit's intent in the bucket that owns a claim whose lease is over.
#: Returns the intent if the bucket committed; else leaves ABORTED there (for ARGV[1]
#: ms), so that the commit, if it is still to come, is refused, and returns false.
DECIDE = """
local intent = redis.call('GET', KEYS[1])
if intent and intent ~= 'aborted' then return intent end
if not intent then redis.call('SET', KEYS[1], 'aborted', 'PX', ARGV[1]) end
return false
"""
