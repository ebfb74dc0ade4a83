"""A speed patch for faust-streaming 0.15.3's consumer: what the worker's fetch loop
needs so that Faust's own code is a small part of the worker's CPU (the rates, stock and
patched: bench/README.md, `bench.faust_noop`).

Why (py-spy and per-thread CPU): a Faust worker
against a fast broker is not waiting on Kafka, it is CPU-bound in Faust's per-message
Python code: every message goes to the conductor through
`wait_first(callback(message), suspend_flow.wait())`, and mode's `wait_first` creates
four asyncio Tasks, runs `asyncio.wait` and cancels three of them for every message,
then through a channel queue, an `Event` and the Stream API, to an agent.

1. Records of *batch topics* (`batch_subscribe`) skip the conductor and the Stream API
   altogether: the fetch loop (`Consumer._drain_messages`, copied) collects them per
   fetch round and hands them to a batch handler in one call (see `streams.batches`
   for how they are tracked and acked). Other topics' records (Faust's own) go to the
   conductor as in stock Faust.
2. `getmany(timeout=1.0)` waits out its second when every partition with data is paused
   (a full stream buffer); the loop waits briefly for paused partitions to resume and
   fetches with a 0.1 s timeout.
3. `TableManager.on_start` sleeps a hard-coded second before the conductor subscribes;
   we have no tables (state lives in Redis), so we skip it: a worker starts that much sooner.

Measured with `bench.faust_noop --shares`, parts that an earlier version had are gone
because the worker's path gained nothing from them: a fast path past `wait_first` to
the conductor, cached settings lookups per event, and the Monitor sensor's per-event
hooks turned off (each 10-13% of an *agent's* rate, 0 of a batch topic's).

`_drain_messages` is a modified copy of a private method, so `install()` patches only
the faust-streaming version it was copied from and tested with, and otherwise leaves
Faust as it is and says so. What correctness relies on is not here but in
`streams.faust_fixes`, which applies to any version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING, Consumer

from streams.batches import BatchHandler, Prepare, Subscription, router_of, subscriptions_of

log = logging.getLogger(__name__)

PATCHED_VERSIONS = frozenset({"0.15.3"})

#: seconds the fetcher may wait for records in one getmany call (Faust: 1.0)
GETMANY_TIMEOUT_S = 0.1

_installed = False


def install(*, without: Collection[str] = ()) -> bool:
    """Patch Faust (idempotent); return whether the patch is active. `without` leaves
    out optional parts (`OPTIONAL`), for `bench.faust_noop` to measure each one's share;
    the fetch loop itself is what batch topics need, so it is never left out."""
    global _installed
    if _installed:
        return True
    if faust.__version__ not in PATCHED_VERSIONS:
        log.warning(
            "faust-streaming %s is not a version traitflow's consumer patch was made for "
            "(%s); running unpatched, expect ~3x lower throughput",
            faust.__version__,
            ", ".join(sorted(PATCHED_VERSIONS)),
        )
        return False
    if unknown := set(without) - OPTIONAL.keys():
        raise ValueError(f"no optional part {sorted(unknown)} (parts: {sorted(OPTIONAL)})")
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    for name, part in OPTIONAL.items():
        if name not in without:
            part()
    _installed = True
    return True


def batch_subscribe(
    app: faust.App,
    topic: faust.TopicT,
    handler: BatchHandler,
    *,
    max_size: int,
    prepare: Prepare = list,
) -> None:
    """Deliver `topic`'s records to `handler` in batches of at most `max_size`, each
    first turned into what the handler takes by `prepare` (default: a list).

    A batch is what arrived while the one before it was handled (cut at `max_size`),
    so batches grow with the backlog and stay small when the worker keeps up. Call it
    before the worker starts. Installs the patch: without it Faust would route the
    records to a stream nobody reads, so this raises where it cannot be installed.
    """
    if not install():
        raise RuntimeError(
            f"batch topics need traitflow's consumer patch, which does not support "
            f"faust-streaming {faust.__version__}"
        )
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, not {max_size}")
    subscriptions = subscriptions_of(app)
    for name in topic.topics:
        if name in subscriptions:
            raise ValueError(f"topic {name!r} already has a batch handler")
        subscriptions[name] = Subscription(prepare, handler, max_size)
    # the conductor builds the consumer's subscription (and the acking topics) from
    # app.topics; it never sees these records, the fetch loop routes them here first
    app.topics.add(topic)


async def _drain_messages(self: Any, fetcher: Any) -> None:
    # Copy of faust.transport.consumer.Consumer._drain_messages (0.15.3) with batch
    # topics routed around the conductor (streams.batches) and a shorter getmany wait.
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    suspend_flow_is_set = self.suspend_flow.is_set

    batches = router_of(self)
    batch_subscription = batches.subscriptions.get
    flush_batch = batches.flush
    # a batch left running by a cancelled loop finishes first (partition order)
    await batches.wait_in_flight()

    # -----------------------------------------------------------------------

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    getmany_timeout = GETMANY_TIMEOUT_S
    monotonic = time.monotonic

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            # Original: getmany(timeout=1.0).  When every partition with data
            # is paused because its stream buffer is under pressure
            # (Consumer.on_buffer_full), the fetch waits the FULL timeout on
            # the remaining (empty) partitions, e.g. the assignor's leader
            # topic, even though the buffer drains and the TP is resumed
            # milliseconds later.  A short timeout bounds that dead time.
            # If partitions are paused because their stream buffer is under
            # pressure, wait (bounded, cheap polling) for the buffer to drop
            # so they are re-activated before we fetch -- otherwise getmany
            # only looks at the other (often empty) partitions and waits out
            # its timeout.  The agent still has >= pressure_drop_size events
            # queued meanwhile, so it is never starved.
            if self._buffered_partitions:
                deadline = monotonic() + getmany_timeout
                while (
                    self._buffered_partitions
                    and not suspend_flow_is_set()
                    and not self.should_stop
                    and monotonic() < deadline
                ):
                    await sleep(0.002)
            ait = getmany(timeout=getmany_timeout)

            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        subscription = batch_subscription(message.topic)
                        if subscription is not None:
                            pending = subscription.pending
                            pending.append(message)
                            if len(pending) >= subscription.max_size:
                                await flush_batch(subscription)
                        else:  # Faust's own topics, as stock Faust does
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                # the end of a fetch round: hand over what it brought
                await batches.flush_all()
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def _skip_table_manager_start_sleep() -> None:
    from faust.tables.manager import TableManager

    async def on_start(self: Any) -> None:
        await asyncio.sleep(0)
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    TableManager.on_start = on_start  # type: ignore[method-assign]


#: the parts of the patch besides the fetch loop (point 3 of the docstring)
OPTIONAL: dict[str, Callable[[], None]] = {
    "start_sleep": _skip_table_manager_start_sleep,
}
