"""The worker's log of identity links refused by a source's trust level, at a bounded
rate.

Such a refusal (`attributes.stitching`, trusted links) is what an attack on identity
stitching looks like, and also what an untrusted browser source sends with every
event of a logged-in visitor whose device no trusted source has linked yet: either
can come thousands of times a second, and a line each would flood the log (a log an
attacker could fill at will). So each (source, reason) gets at most one line every
`every_s` seconds, naming one refused link as an example and how many were refused
since the last line; the metric (`traitflow_identity_links_refused_total`) counts
every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from attributes.stitching import LIMIT, Refusal

log = logging.getLogger("streams.processor")


class RefusalLog:
    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        #: (source, reason) -> when it was last logged, and how many since
        self._last: dict[tuple[str, str], float] = {}
        self._unsaid: dict[tuple[str, str], int] = {}

    def note(self, refusals: Iterable[Refusal]) -> None:
        now = self.clock()
        for refusal in refusals:
            if refusal.kind == LIMIT:
                continue  # logged each by the processor, as before
            key = (refusal.source, refusal.kind)
            unsaid = self._unsaid.get(key, 0) + 1
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._unsaid[key] = unsaid
                continue
            self._last[key], self._unsaid[key] = now, 0
            log.warning(
                "identity link refused: %s %r: %s (%d refused for source %r, reason %s, "
                "since the last such line; README: Trusted links)",
                *refusal.identity,
                refusal.reason,
                unsaid,
                refusal.source,
                refusal.kind,
            )
