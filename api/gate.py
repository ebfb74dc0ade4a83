"""A request's rate-limit charge and its profile read in one Lua script: a refused
request reads nothing.

A direct route (`api.direct.admitted`) used to send the key's charge and then its read
in the same write: one round trip, but Redis ran the read of a refused request too,
and its result was thrown away, so a throttled key still cost a profile read per
request. Here the charge waits (`Charge`, in a context variable for the request's task)
until the route's first read: `GatedReads`, the connection the API's stores read
through, sends that read as one script that charges the bucket and, only if a token
was left, reads (`gated`). Still one round trip, one command fewer; a refused request
costs Redis the charge alone. A route that ends without reading sends the charge then
(`Charge.settle`).

What is gated: the first `GET` or script (`eval`) a request's task sends through
`GatedReads` while its charge is pending; the key-record lookups and the charge
itself come before it or go through `eval_soon` and other commands, unchanged.

On Redis Cluster a script's keys must share a hash slot: they do when every key is
under one hash tag (the prefix as a tag, docs/redis-cluster.md's option A); a layout
that spreads profiles over slots would have to send the charge apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from api import ratelimit
from api.errors import ApiError
from api.key_layout import ApiKeyLayout
from api.keys import KeyStore
from traitflow.resp import Arg, RespClient, Script


@dataclass(slots=True)
class Charge:
    """One request's charge against its key's bucket, not sent yet (`sent` False), and
    what Redis answered once it was: seconds to wait, 0 = allowed."""

    keys: KeyStore
    key_id: str
    rate_per_s: float
    burst: int
    sent: bool = False
    wait: float | None = None

    async def settle(self) -> float:
        """The charge's wait, sending it on its own if no read carried it."""
        if not self.sent:
            self.sent = True
            self.wait = float(await self.keys.charge(self.key_id, self.rate_per_s, self.burst))
        return self.wait or 0.0


#: the charge of the request the running task serves, until its first read carries it
PENDING: ContextVar[Charge | None] = ContextVar("traitflow_pending_charge", default=None)


def refused(wait: float) -> ApiError:
    """What a gated read raises when the charge found no token: nothing was read.
    `api.direct.Admission` answers the key's 429 in its place (counted there); this
    is the same 429, should it ever get further."""
    return ApiError(
        429,
        "rate limit exceeded for this API key",
        headers={"Retry-After": ratelimit.retry_after(wait)},
    )


# The read of a script, run only if the charge allowed it. KEYS[1] is the bucket and
# ARGV[1..3] its rate, burst and idle expiry; the read's own keys and arguments follow
# and are handed to it as KEYS and ARGV. Reply: {wait} when refused, {'0', read's
# reply} when allowed (a read's `false` is a nil element).
_GATE = """
local wait = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
if wait > 0 then return {string.format('%.17g', wait)} end
local keys, argv = {}, {}
for i = 2, #KEYS do keys[i - 1] = KEYS[i] end
for i = 4, #ARGV do argv[i - 3] = ARGV[i] end
local function read(KEYS, ARGV)
"""

_GATED: dict[str, Script] = {}


def gated(script: Script) -> Script:
    """`script` behind the charge (see `_GATE`); made once per script."""
    found = _GATED.get(script.sha)
    if found is None:
        source = (
            ratelimit.TAKE_FUNCTION
            + _GATE
            + script.source
            + "\nend\nreturn {'0', read(keys, argv)}\n"
        )
        found = _GATED[script.sha] = Script.of(source)
    return found


#: a `GET`, as a script to gate
GET = Script.of("return redis.call('GET', KEYS[1])")


class GatedReads(RespClient):
    """The API's connection (`inner`), with the first read of a request whose charge
    is pending sent behind the charge. Everything else goes to `inner` as it is; this
    object never connects itself."""

    def __init__(self, inner: RespClient, layout: ApiKeyLayout) -> None:
        super().__init__(inner.address, inner.timeout_s)
        self.inner = inner
        self.layout = layout

    async def call(self, *args: Arg) -> Any:
        charge = PENDING.get()
        if charge is None or charge.sent or len(args) != 2 or args[0] != "GET":
            return await self.inner.call(*args)
        return await self._gated(charge, GET, [args[1]], [])

    async def eval(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        charge = PENDING.get()
        if charge is None or charge.sent:
            return await self.inner.eval(script, keys, args)
        return await self._gated(charge, script, keys, args)

    def eval_soon(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return self.inner.eval_soon(script, keys, args)

    async def _gated(
        self, charge: Charge, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        charge.sent = True  # whatever Redis answers, this request is charged once
        rate, burst = charge.rate_per_s, charge.burst
        reply = await self.inner.eval(
            gated(script),
            [self.layout.rate_bucket(charge.key_id), *keys],
            [repr(rate), burst, ratelimit.idle_expiry_ms(rate, burst), *args],
        )
        charge.wait = wait = float(reply[0])
        if wait > 0:
            raise refused(wait)
        return reply[1] if len(reply) > 1 else None

    async def close(self) -> None:
        await self.inner.close()
