"""The API's profile store on the spread layout (docs/redis-cluster.md, option B).

On one Redis, or one hash tag, a request's rate-limit charge and its profile read are
one script (`api.gate`). On the spread layout the key's bucket is under the prefix's
tag and the profile under its own bucket's: one script cannot do both. The charge is
sent alongside the read instead, the two at once, so a request still waits one round
trip (when its read is one: `traitflow.spread_reads`); the price is that a refused
request costs Redis its read, whose result is dropped for the 429.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from api.gate import PENDING, refused
from traitflow.resp import TIMEOUT_S
from traitflow.spread_reads import Wanted
from traitflow.spread_store import SpreadProfileStore


class ChargedSpreadStore(SpreadProfileStore):
    """`SpreadProfileStore` whose first read of a request carries its pending charge
    alongside; a refused charge raises the 429 (`api.gate.refused`). A read refused
    while its slot moves is tried again for the API's timeout, then fails (503), as
    option A's reads do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocol.wait_out_s = TIMEOUT_S

    async def _read(
        self, entity: str, lookups: Sequence[tuple[str, str]], wanted: Wanted
    ) -> list[list[bytes | None] | None]:
        charge = PENDING.get()
        if charge is None or charge.sent:
            return await super()._read(entity, lookups, wanted)
        wait, found = await asyncio.gather(charge.settle(), super()._read(entity, lookups, wanted))
        if wait > 0:
            raise refused(wait)
        return found
