"""Per-key rate limit: a token bucket of `burst` tokens refilled at `rate` per second.

A request takes one token; with none left it is refused, and the caller learns how
long until one is back (`Retry-After`). The bucket lives in Redis so that every API
process shares it: `TAKE_SCRIPT` reads, refills, takes and writes it in one atomic
round trip, on Redis's clock (the API processes' clocks need not agree). `take` is the
same arithmetic in Python, for the in-memory key store and for tests; the two must
stay in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens left at time `at` (seconds, any fixed origin)."""

    tokens: float
    at: float


def take(bucket: Bucket | None, now: float, rate: float, burst: int) -> tuple[Bucket, float]:
    """The bucket after one request at `now`, and how many seconds the request must
    wait for a token: 0 when it was allowed (a refused request takes nothing).

    A key never seen starts full. Time going backwards adds nothing."""
    if bucket is None:
        tokens = float(burst)
    else:
        tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return Bucket(tokens, now), (1.0 - tokens) / rate


def retry_after(wait: float) -> str:
    """`Retry-After` is whole seconds: round up, so a client that honours it succeeds."""
    return str(max(1, math.ceil(wait)))


def idle_expiry_ms(rate: float, burst: int) -> int:
    """After this long without requests the bucket is full again, the same as no bucket:
    Redis may forget it, so idle keys cost no memory."""
    return math.ceil(burst / rate * 1000) + 1000


# `take` above, in Lua, for the scripts that charge a bucket (`TAKE_SCRIPT`, and the
# gated reads of `api.gate`, which charge and read in one script): the bucket's key, the
# rate per second, the burst and the idle expiry in ms; returns the wait in seconds and
# the tokens left (those who take one result get the wait).
TAKE_FUNCTION = """
local function take(bucket, rate, burst, expiry_ms)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(state[1])
  if tokens == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - tonumber(state[2])) * rate)
  end
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
  redis.call('HSET', bucket, 'tokens', string.format('%.17g', tokens),
             'at', string.format('%.17g', now))
  redis.call('PEXPIRE', bucket, expiry_ms)
  return wait, tokens
end
"""

# KEYS[1]: the bucket (a hash: tokens, at). ARGV: rate per second, burst, idle expiry
# in ms. Returns the wait in seconds as a string ("0" = allowed): a Lua number in a
# reply would be truncated to an integer.
TAKE_SCRIPT = (
    TAKE_FUNCTION
    + """
local wait = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
return string.format('%.17g', wait)
"""
)

# `TAKE_SCRIPT` that also says how many tokens the bucket has left after it, for an API
# that decides by them whether a request's read may go with its charge
# (`api.headroom`): {wait, tokens left}, both as strings.
TAKE_LEFT_SCRIPT = (
    TAKE_FUNCTION
    + """
local wait, tokens = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
return {string.format('%.17g', wait), string.format('%.17g', tokens)}
"""
)
