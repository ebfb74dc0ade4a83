"""Batch delivery of a topic's records, below Faust's Stream API.

Why: a consumer that wants lists of records (like `BatchProcessor`) pays Faust's
per-event machinery for nothing: conductor callback, `Event` object, channel queue,
`Stream` iteration, `take_events` buffering and a per-event ack coroutine. That was
about a third of the worker's CPU. A *batch topic* (`streams.fastfaust.batch_subscribe`)
skips all of it: the consumer's fetch loop (`fastfaust._drain_messages`) collects the
topic's messages and hands them to one async handler in batches, then acks them. This
module is what that loop hands them to (`BatchRouter`) and knows nothing of the patch:
`fastfaust` imports it, never the other way round.

What stays Faust's: the consumer group, rebalances, offset tracking and commits
(acks go through `Consumer.ack`, so the committed offset is still the end of the
contiguous run of acked offsets), the worker lifecycle and the producer.

The rules that keep this at-least-once and in order, under rebalances and shutdown:
- messages are tracked as unacked (`Consumer._unacked_messages`, what the Stream does
  for the conductor path) only when handed to the handler, so the wait for unacked
  messages that Faust does on a revoke or a stop waits for the batch in progress and
  then commits it;
- a batch in progress always finishes and acks: it runs in its own task, shielded
  from the cancellation of the fetch loop on shutdown;
- messages fetched but not yet handed over when flow is suspended (a revoke, a stop)
  are dropped untracked and unacked: Faust seeks to the committed offsets before it
  resumes flow, so they are read again, here or by the partition's new owner;
- messages of an older consumer generation or of a partition no longer assigned are
  dropped the same way, never handed over;
- batches are handled one after another per consumer, so each partition is handled
  in offset order. While one is handled, the fetch loop reads on and the records
  wait (`flush_all`); a full batch's worth is handed over at once and *prepared*
  (decoded: pure computation) while the one before it waits for its writes, so the
  worker's core is not idle during Redis round trips. Two batches at most are handed
  over at a time: the fetch loop then waits for the older one before it reads on. A
  batch is applied only after the one before it succeeded: if that one's handler
  raised (the worker stops), the next is neither applied nor acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import Message

log = logging.getLogger(__name__)

#: Turns a batch's messages into what its handler takes. Pure computation (no I/O, no
#: shared state): it may run while the previous batch is still being handled.
Prepare = Callable[[Sequence[Message]], Any]

#: Receives one prepared batch and returns once its effect is durable; the messages
#: are acked then. It must not raise: a failure has to be retried inside it (see
#: `process_until_done`).
BatchHandler = Callable[[Any], Awaitable[None]]

_APP_ATTRIBUTE = "_traitflow_batch_subscriptions"
_CONSUMER_ATTRIBUTE = "_traitflow_batch_router"


@dataclass(slots=True)
class Subscription:
    prepare: Prepare
    handler: BatchHandler
    max_size: int
    pending: list[Message] = field(default_factory=list)


def subscriptions_of(app: Any) -> dict[str, Subscription]:
    """Topic name -> its batch subscription, for `app` (empty if none)."""
    subscriptions: dict[str, Subscription] | None = app.__dict__.get(_APP_ATTRIBUTE)
    if subscriptions is None:
        subscriptions = {}
        setattr(app, _APP_ATTRIBUTE, subscriptions)
    return subscriptions


def router_of(consumer: Any) -> BatchRouter:
    """The consumer's router; it outlives fetch loop restarts (and their batches)."""
    router: BatchRouter | None = consumer.__dict__.get(_CONSUMER_ATTRIBUTE)
    if router is None:
        router = BatchRouter(consumer)
        setattr(consumer, _CONSUMER_ATTRIBUTE, router)
    return router


class BatchRouter:
    """Hands collected messages to their handlers, one batch after another, and acks
    them; the next batch is prepared while the one before it is handled."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.subscriptions = subscriptions_of(self.app)
        #: the newest batch handed over (it waits for the one before it, if any)
        self.in_flight: asyncio.Future[bool] | None = None

    async def wait_in_flight(self) -> None:
        """Wait for batches left running by a cancelled fetch loop (keeps the order)."""
        if self.in_flight is not None and not self.in_flight.done():
            await asyncio.shield(self.in_flight)

    async def flush_all(self) -> None:
        """The end of a fetch round: hand over what it brought, unless a batch is still
        being handled. Then the records wait for it, joined by those of the next
        rounds, and are handed over the moment it is done (`_deliver`): the fetch loop
        keeps reading meanwhile. (Waiting for it here instead held every record that
        arrived during a batch for two batches more: aiokafka sends the next fetch only
        once the last one's records are taken.)"""
        if self.in_flight is not None and not self.in_flight.done():
            return
        for subscription in self.subscriptions.values():
            if subscription.pending:
                await self.flush(subscription)

    async def flush(self, subscription: Subscription) -> None:
        """Hand over the subscription's pending messages, unless they are stale; with a
        batch in flight, wait for it (two batches at most are handed over)."""
        previous = self._hand_over(subscription)
        if previous is not None:
            # shielded: a cancelled fetch loop leaves both running
            await asyncio.shield(previous)

    def _hand_over(self, subscription: Subscription) -> asyncio.Future[bool] | None:
        """Start handling the pending messages; the batch this one follows, if any.

        No await between the checks in `_deliverable` and tracking: a revoke cannot
        slip in between, and once tracked, its wait for unacked messages waits for
        this batch."""
        batch, subscription.pending = subscription.pending, []
        batch = self._deliverable(batch)
        if not batch:
            return None
        track = self.consumer._unacked_messages.add
        for message in batch:
            message.tracked = True
            track(message)
        previous = self.in_flight
        self.in_flight = asyncio.ensure_future(self._deliver(subscription, batch, previous))
        return previous

    def _deliverable(self, batch: list[Message]) -> list[Message]:
        consumer = self.consumer
        app = self.app
        if (
            consumer.should_stop
            or consumer.suspend_flow.is_set()
            or not app.flow_control.is_active()
        ):
            log.debug("flow suspended: %d fetched records left for a re-read", len(batch))
            return []
        generation = app.consumer_generation_id
        assigned = consumer.assignment()
        current = [m for m in batch if m.generation_id == generation and m.tp in assigned]
        if len(current) < len(batch):
            log.debug("%d records of an old assignment dropped", len(batch) - len(current))
        return current

    async def _deliver(
        self,
        subscription: Subscription,
        batch: Sequence[Message],
        previous: asyncio.Future[bool] | None,
    ) -> bool:
        """Prepare, then (once the previous batch is done) handle and ack the batch;
        whether it was handled."""
        try:
            prepared = subscription.prepare(batch)  # while the previous one awaits Redis
            if previous is not None and not await previous:
                return False  # it failed (the worker stops): this one must not skip it
            await subscription.handler(prepared)
        except Exception as exc:
            # Acking would commit records never applied, and going on would apply
            # later records first: stop the worker; a restart re-reads the batch.
            log.critical("batch handler raised; stopping the worker", exc_info=True)
            await self.app.crash(exc)
            return False
        ack = self.consumer.ack
        for message in batch:
            ack(message)
        if self.in_flight is asyncio.current_task():  # the newest: what waited is next
            for waiting in self.subscriptions.values():
                if waiting.pending:
                    self._hand_over(waiting)
        return True
