"""Changes to Faust that traitflow's guarantees rely on, apart from the speed patch.

`streams.fastfaust` replaces a private method with a modified copy, so it applies only
to the faust-streaming version it was copied from. What is here must never be lost to
an upgrade like that: each change *wraps* a method (calls the original, then adds to
it), so it applies to any version, and `install()` raises if a method it wraps is gone
instead of running without it.

1. **Commit before forgetting a revoke's acks** (correctness). On a revoke,
   `Consumer.on_partitions_revoked` drops the acked-but-uncommitted offsets of the
   revoked partitions *before* the revoke's final commit, so up to one commit
   interval of processed records was redelivered to the partitions' next owner
   (`tests/integration/test_rebalance.py`). We commit them first.
2. **The fetch wait is ours** (latency). Faust's aiokafka driver hard-codes
   `fetch_max_wait_ms=1500`. Kafka answers a waiting fetch as soon as records arrive,
   but Tansu answers only when the wait is over, so an event waited half of that on
   average (up to all of it) before the worker saw it. The worker's consumer uses
   `Settings.fetch_wait_ms` (`set_fetch_wait`) instead.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

log = logging.getLogger(__name__)

_APP_FETCH_WAIT = "_traitflow_fetch_wait_ms"
_WRAPPED = "_traitflow_wrapped"


def install() -> None:
    """Apply every fix (idempotent)."""
    _wrap(Consumer, "on_partitions_revoked", _commit_before_forgetting_revoked_acks)
    _wrap(AIOKafkaConsumerThread, "_create_worker_consumer", _fetch_wait_of_the_app)


def set_fetch_wait(app: Any, milliseconds: int) -> None:
    """The longest a fetch of `app`'s worker consumer may wait at the broker for records."""
    setattr(app, _APP_FETCH_WAIT, milliseconds)


def installed() -> bool:
    return all(
        getattr(getattr(owner, name), _WRAPPED, False)
        for owner, name in (
            (Consumer, "on_partitions_revoked"),
            (AIOKafkaConsumerThread, "_create_worker_consumer"),
        )
    )


def _wrap(owner: type, name: str, wrapper: Any) -> None:
    original = getattr(owner, name, None)
    if original is None:
        raise RuntimeError(
            f"faust-streaming changed: {owner.__name__}.{name} is gone, and traitflow "
            "relies on a fix to it (streams/faust_fixes.py)"
        )
    if getattr(original, _WRAPPED, False):
        return
    wrapped = wrapper(original)
    setattr(wrapped, _WRAPPED, True)
    setattr(owner, name, wrapped)


def _commit_before_forgetting_revoked_acks(original: Any) -> Any:
    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        if revoked and not self.app.client_only:
            try:
                await self.commit(revoked)
            except Exception as exc:  # the revoke must go on; at worst records are re-read
                log.warning("commit before revoking %d partitions failed: %r", len(revoked), exc)
        await original(self, revoked)

    return on_partitions_revoked


def _fetch_wait_of_the_app(original: Any) -> Any:
    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = getattr(self.app, _APP_FETCH_WAIT, None)
        if wait is not None:
            # read by AIOKafkaConsumer.start() when it creates its Fetcher
            consumer._fetch_max_wait_ms = wait
        return consumer

    return _create_worker_consumer
