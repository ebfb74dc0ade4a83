"""What an API process remembers of failed authentications, so that abuse stays in it.

A token whose key id is not in Redis costs a Redis lookup (`KeyStore.lookup`) to find
that out. Two in-process memories stop a caller from turning that into Redis load:

- `UnknownKeys`: key ids that Redis did not have, remembered for `ttl_s`
  (`TRAITFLOW_API_NEGATIVE_KEY_TTL_S`): a client repeating an unknown or revoked key
  is answered 401 from memory. The price: a key created after its id was remembered
  here works in this process up to `ttl_s` later. At most `MAX_UNKNOWN_KEYS` ids are
  kept (the oldest go first), so random ids cannot fill memory.
- `FailureLimits`: a token bucket per client address that each failed authentication
  takes from (`TRAITFLOW_API_AUTH_FAILURES_PER_S`, `..._BURST`): an address whose
  bucket is empty is answered 429 without a lookup, except for keys this process has
  read (a valid client behind the same address goes on). A lookup of an id this
  process has not read takes its token before it is sent (given back if the key is
  found), so concurrent requests cannot slip lookups past the bucket. Random tokens
  each have a new id, which `UnknownKeys` cannot help with; this bounds what they cost
  Redis to the bucket per address. At most `MAX_ADDRESSES` addresses are kept.

Both are per process, not shared through Redis: sharing them would cost the Redis
round trip they exist to save. With N API processes an address gets N buckets.

`client_address` says whose address a request is: the connection's peer, or, behind
`TRAITFLOW_API_TRUSTED_PROXIES` proxies, the address the outermost of them saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request

from api import ratelimit

#: unknown key ids remembered at most (about 100 bytes each)
MAX_UNKNOWN_KEYS = 65_536
#: client addresses with a failure bucket at most (about 200 bytes each)
MAX_ADDRESSES = 65_536


class UnknownKeys:
    """Key ids Redis did not have, each remembered for `ttl_s` (0: none is)."""

    def __init__(
        self,
        ttl_s: float,
        capacity: int = MAX_UNKNOWN_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self.clock = clock
        #: key id -> when it was found unknown; oldest first (dicts keep insertion order)
        self._since: dict[str, float] = {}

    def __contains__(self, key_id: str) -> bool:
        since = self._since.get(key_id)
        if since is None:
            return False
        if self.clock() - since < self.ttl_s:
            return True
        del self._since[key_id]
        return False

    def __len__(self) -> int:
        return len(self._since)

    def add(self, key_id: str) -> None:
        if self.ttl_s <= 0:
            return
        self._since.pop(key_id, None)  # re-added: now the newest
        while len(self._since) >= self.capacity:
            del self._since[next(iter(self._since))]
        self._since[key_id] = self.clock()


class FailureLimits:
    """A token bucket of `burst` failed authentications per client address, refilled
    at `rate_per_s` (`api.ratelimit.take`'s arithmetic, in this process)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        capacity: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.capacity = capacity
        self.clock = clock
        self._buckets: dict[str, ratelimit.Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def waiting(self, address: str) -> float:
        """Seconds until `address` may fail again; 0: it may now. Takes nothing."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return 0.0
        _, wait = ratelimit.take(bucket, self.clock(), self.rate_per_s, self.burst)
        return wait

    def fail(self, address: str) -> float:
        """Count a failed authentication of `address`: 0 when its bucket had a token
        (it took it), else the seconds until one is back (nothing taken)."""
        buckets = self._buckets
        bucket, wait = ratelimit.take(
            buckets.pop(address, None), self.clock(), self.rate_per_s, self.burst
        )
        # a bucket dropped here is full again next time: the bound costs some leniency
        # toward an attacker with more than `capacity` addresses, never a refusal
        while len(buckets) >= self.capacity:
            del buckets[next(iter(buckets))]
        buckets[address] = bucket  # the newest: the oldest is dropped first
        return wait

    def refund(self, address: str) -> None:
        """Give back a token `fail` took for what turned out not to be a failure."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            tokens = min(float(self.burst), bucket.tokens + 1.0)
            self._buckets[address] = ratelimit.Bucket(tokens, bucket.at)


def client_address(request: Request, trusted_proxies: int) -> str:
    """The address a request's failures are counted against.

    With no trusted proxy: the connection's peer. (uvicorn itself already replaces
    the peer with the X-Forwarded-For address for connections from its
    `FORWARDED_ALLOW_IPS`, by default the loopback addresses: a proxy on the same
    host.) Behind `trusted_proxies` proxies, each appending the address it was
    connected from to X-Forwarded-For, the last `trusted_proxies` entries were written
    by them and anything left of those by the client, who can write anything there:
    the address is the entry the outermost trusted proxy wrote (the leftmost one if
    there are fewer), else the peer."""
    peer = request.client.host if request.client is not None else ""
    if trusted_proxies <= 0:
        return peer
    forwarded = [
        entry.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for entry in header.split(",")
    ]
    forwarded = [entry for entry in forwarded if entry]
    if not forwarded:
        return peer
    return forwarded[-min(trusted_proxies, len(forwarded))]
