"""A speed patch for faust-streaming 0.15.3's consumer: 7k -> 20-25k events/s here.

Why (measured with py-spy and per-thread CPU, see bench/README.md): a Faust worker
against a fast broker is not waiting on Kafka, it is CPU-bound in Faust's per-message
Python code, and one fixed wait appears once that is fixed.

1. `Consumer._drain_messages` hands every message to the conductor through
   `wait_first(callback(message), suspend_flow.wait())`; mode's `wait_first` creates
   four asyncio Tasks, runs `asyncio.wait` and cancels three of them: ~48 us a message,
   a third of the whole per-event cost. We await the callback directly when it cannot
   block (flow active, producer buffer and stream buffers not full) and keep the
   original race otherwise, which is what makes rebalances abandon a blocked delivery.
2. When a stream buffer fills, the conductor pauses its partition, and the next
   `getmany(timeout=1.0)` waits the full second on the partitions left (e.g. the empty
   assignor topic). We wait briefly for paused partitions to resume and fetch with a
   0.1 s timeout.
3. Two settings lookups per message go through Faust's slow settings descriptors
   (`App.create_event`, `ProducerBuffer.size`); we cache them.
4. `TableManager.on_start` sleeps a hard-coded second before the conductor subscribes;
   we have no tables (state lives in Redis), so we skip it.
5. The Monitor sensor's per-event hooks cost ~25% of the agent side; traitflow keeps its
   own counters, so they are turned off.
6. Records of *batch topics* (`streams.batches.batch_subscribe`) skip the conductor and
   the Stream API altogether: they are collected per fetch round and handed to a
   batch handler in one call (see `streams.batches` for how they are tracked and acked).

`_drain_messages` is a modified copy of a private method, so `install()` patches only
the faust-streaming version it was copied from and tested with, and otherwise leaves
Faust as it is and says so. What correctness relies on is not here but in
`streams.faust_fixes`, which applies to any version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING, Consumer

from streams.batches import router_of

log = logging.getLogger(__name__)

PATCHED_VERSIONS = frozenset({"0.15.3"})

#: seconds the fetcher may wait for records in one getmany call (Faust: 1.0)
GETMANY_TIMEOUT_S = 0.1

_installed = False


def install() -> bool:
    """Patch Faust (idempotent); return whether the patch is active."""
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
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    _cache_settings_lookups()
    _skip_table_manager_start_sleep()
    _disable_monitor_hooks()
    _installed = True
    return True


async def _drain_messages(self: Any, fetcher: Any) -> None:
    # Copy of faust.transport.consumer.Consumer._drain_messages (0.15.3)
    # with a fast path for delivering a message to the conductor, and batch
    # topics routed around the conductor (streams.batches).
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

    # --- fast path helpers -------------------------------------------------
    app = self.app
    suspend_flow_is_set = self.suspend_flow.is_set
    flow_control_active = app.flow_control.is_active
    tp_index = app.topics._tp_index  # TP -> set of subscribing channels
    producer_buffer = app.producer.buffer
    max_producer_buffer = producer_buffer.max_messages

    producer_threaded = app.conf.producer_threaded
    pending_queue = producer_buffer.pending  # asyncio.Queue (non-threaded)

    def producer_buffer_full() -> bool:
        if producer_threaded:
            return bool(producer_buffer.size > max_producer_buffer)
        return bool(pending_queue.qsize() > max_producer_buffer)

    def can_deliver_without_blocking(tp: Any) -> bool:
        if suspend_flow_is_set() or not flow_control_active():
            return False
        if producer_buffer_full():
            return False
        channels = tp_index.get(tp)
        if channels:
            for chan in channels:
                if chan.queue.full():
                    return False
        return True

    async def wait_for_room(tp: Any) -> None:
        # A subscribed stream buffer is full (the agent is the bottleneck).
        # Instead of paying a 4-task wait_first per message while it stays
        # full, wait until every buffer for this TP is down to half, polling
        # cheaply; give up as soon as flow is suspended (rebalance) or we
        # stop -- the caller then falls back to the original wait_first path.
        channels = tp_index.get(tp) or ()
        while not (suspend_flow_is_set() or self.should_stop):
            if not flow_control_active():
                return
            for chan in channels:
                q = chan.queue
                # pressure_drop_size (40% of maxsize) is where the conductor
                # re-activates fetching for this TP (Consumer.on_buffer_drop)
                if q.qsize() > q.pressure_drop_size:
                    break
            else:
                return
            await sleep(0.002)

    async def to_conductor(tp: Any, message: Any) -> None:
        if not can_deliver_without_blocking(tp):
            await wait_for_room(tp)
        if can_deliver_without_blocking(tp):
            # cannot suspend: no tasks, no asyncio.wait
            await callback(message)
        else:
            # original behaviour (abandon on suspend_flow)
            await self.wait_first(callback(message), self.suspend_flow.wait())

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
                        else:
                            await to_conductor(tp, message)
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


def _cache_settings_lookups() -> None:
    from faust.app.base import App
    from faust.transport.producer import ProducerBuffer

    def create_event(self: Any, key: Any, value: Any, headers: Any, message: Any) -> Any:
        try:
            event_cls = self.__dict__["_traitflow_event_cls"]
        except KeyError:
            event_cls = self.__dict__["_traitflow_event_cls"] = self.conf.Event
        return event_cls(self, key, value, headers, message)

    def size(self: Any) -> int:
        try:
            threaded = self.__dict__["_traitflow_threaded"]
        except KeyError:
            threaded = self.__dict__["_traitflow_threaded"] = bool(self.app.conf.producer_threaded)
        if threaded:
            return len(self.queue._queue) if self.queue else 0
        return len(self.pending._queue)

    App.create_event = create_event  # type: ignore[method-assign]
    ProducerBuffer.size = property(size)  # type: ignore[method-assign,assignment]


def _skip_table_manager_start_sleep() -> None:
    from faust.tables.manager import TableManager

    async def on_start(self: Any) -> None:
        await asyncio.sleep(0)
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    TableManager.on_start = on_start  # type: ignore[method-assign]


def _disable_monitor_hooks() -> None:
    from faust.sensors.monitor import Monitor

    def nothing(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    for name in (
        "on_message_in",
        "on_stream_event_in",
        "on_stream_event_out",
        "on_message_out",
        "track_tp_end_offset",
    ):
        setattr(Monitor, name, nothing)
