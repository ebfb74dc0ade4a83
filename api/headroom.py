"""Whether a request's profile read may go to Redis together with its rate-limit charge,
on a layout where the two cannot be one script (the spread layout: the key's bucket is
under the prefix's tag, the profile under its own bucket's; `api.spread_store`).

Together, the request waits one round trip, but a refused charge has cost Redis its
read; charge first, a refused request reads nothing, but an allowed one waits two. So
the API remembers, per key, what the last charge it sent said was left (the token
bucket's tokens, `api.ratelimit`), counts them back up at the key's rate since that
charge was sent, takes off the charges it has in flight, and sends the read along only
while that leaves the key clearly clear of its limit (`needed`); a key it has no
record of (new to this process, forgotten) is charged first.

What that guarantees. The count is never above what Redis holds, as long as this
process is the only one charging the key: the refill is counted from when the answer
came (after Redis ran the charge), every charge in flight is taken off, and at least
one token of margin is kept. So with one API process a refused request never costs a
profile read. With several processes sharing a key, one's record misses the others'
charges: a read can go with a charge that is refused only when that process's record
said `needed` tokens were left, and that refusal brings its record down to what Redis
said (under one token), from where `needed` tokens take `needed / rate` seconds to come
back. So a throttled key costs at most about one profile read per process per
`needed / rate` seconds, however many requests it sends (before: one per request).

Pure: the clock is given, so tested without a server (`tests/unit/test_headroom.py`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: keys remembered at most (least recently charged forgotten first: charged first again)
HEADROOM_KEYS = 65_536
#: the share of a key's burst that must be left, beyond the request's own token, for
#: its read to go with its charge; never less than `MARGIN_TOKENS`
NEAR_SHARE = 0.1
MARGIN_TOKENS = 1.0


def needed(burst: int) -> float:
    """Tokens the record must show, in flight taken off, for a read to go along:
    the request's own and the margin."""
    return 1.0 + max(MARGIN_TOKENS, burst * NEAR_SHARE)


@dataclass(slots=True)
class _Record:
    #: tokens left as Redis said in the answer that came at `at` (this process's clock)
    tokens: float
    at: float
    #: when the charge of that answer was sent: an older answer is not taken
    sent: float
    #: charges sent and not answered yet
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Sent:
    """A charge sent: whether its read goes with it; give it back to `answered`."""

    together: bool
    at: float
    record: _Record


class Headroom:
    """Per key, the last charge's answer and the charges in flight (see the module)."""

    def __init__(
        self, size: int = HEADROOM_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def send(self, key_id: str, rate_per_s: float, burst: int) -> Sent:
        """A charge about to be sent, counted in flight until `answered`."""
        now = self.clock()
        record = self._records.get(key_id)
        if record is None:  # no answer yet: nothing goes along
            record = self._records[key_id] = _Record(float("-inf"), now, float("-inf"))
            while len(self._records) > self.size:
                self._records.popitem(last=False)
            together = False
        else:
            self._records.move_to_end(key_id)
            left = min(float(burst), record.tokens + max(0.0, now - record.at) * rate_per_s)
            together = left - record.in_flight >= needed(burst)
        record.in_flight += 1
        return Sent(together, now, record)

    def answered(self, sent: Sent, tokens: float | None) -> None:
        """`sent`'s charge was answered: `tokens` left after it (None: not known, or it
        failed). An answer to a charge older than the record's last is not taken. A
        record forgotten meanwhile (`size`) is updated alone, unused."""
        record = sent.record
        record.in_flight = max(0, record.in_flight - 1)
        if tokens is not None and sent.at >= record.sent:
            record.tokens, record.at, record.sent = tokens, self.clock(), sent.at

    def __len__(self) -> int:
        return len(self._records)
