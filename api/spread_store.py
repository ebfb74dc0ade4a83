"""The API's profile store on the spread layout (docs/redis-cluster.md, option B).

On one Redis, or one hash tag, a request's rate-limit charge and its profile read are
one script (`api.gate`): a refused request reads nothing, in one round trip. On the
spread layout the key's bucket is under the prefix's tag and the profile under its own
bucket's: one script cannot do both. So the store decides per request
(`api.headroom`): while the key clearly has tokens left, the charge and the read go
at once (one round trip, as before); near or past its limit, or for a key this
process has no answer for yet, the charge goes first and the read only if it was
allowed (two round trips; a refused request costs Redis its charge alone).

Reads by an identity linked later go through the process's pointer cache
(`traitflow.spread_pointers`): one round trip once the pointer was read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from api.gate import PENDING, Charge, refused
from api.headroom import Headroom, Sent
from traitflow.resp import TIMEOUT_S
from traitflow.spread_pointers import PointerCache
from traitflow.spread_reads import Wanted
from traitflow.spread_store import SpreadProfileStore


class ChargedSpreadStore(SpreadProfileStore):
    """`SpreadProfileStore` whose first read of a request settles its pending charge
    (with it or before it, see the module); a refused charge raises the 429
    (`api.gate.refused`). A read refused while its slot moves is tried again for the
    API's timeout, then fails (503), as option A's reads do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocol.wait_out_s = TIMEOUT_S
        self.pointers = PointerCache()
        self.headroom = Headroom()

    async def _read(
        self, entity: str, lookups: Sequence[tuple[str, str]], wanted: Wanted
    ) -> list[list[bytes | None] | None]:
        charge = PENDING.get()
        if charge is None or charge.sent:
            return await super()._read(entity, lookups, wanted)
        charge.sent = True  # whatever Redis answers, this request is charged once
        sent = self.headroom.send(charge.key_id, charge.rate_per_s, charge.burst)
        if sent.together:
            wait, found = await asyncio.gather(
                self._charge(charge, sent), super()._read(entity, lookups, wanted)
            )
            if wait > 0:
                raise refused(wait)
            return found
        wait = await self._charge(charge, sent)
        if wait > 0:
            raise refused(wait)
        return await super()._read(entity, lookups, wanted)

    async def _charge(self, charge: Charge, sent: Sent) -> float:
        """Send `charge`, note what it left (`api.headroom`); its wait (0: allowed)."""
        tokens = None
        try:
            wait, tokens = await charge.keys.charge_left(
                charge.key_id, charge.rate_per_s, charge.burst
            )
        finally:
            self.headroom.answered(sent, tokens)
        charge.wait = wait
        return wait
