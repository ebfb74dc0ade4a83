"""Publishing records to the broker from an API process: one producer per process.

A route that ingests (`api.ingest`, Treasure Data's personalization call) acknowledges
its caller only after `publish` returned, that is after the broker acknowledged every
record with `acks=all`: what the API said it took is on the broker. When the broker
does not acknowledge within `timeout_s` (down, paused, unreachable), `publish` raises
`PublishFailed` and the route answers 503: the caller keeps the events and sends them
again. A record of a call answered 503 may still have reached the broker; a retry
carrying the same `messageId` counts once (the worker's deduplication by messageId).

The producer connects on the first publish, not when the app starts: an API whose
broker is away still serves reads, and ingest works as soon as the broker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from attributes.errors import TraitflowError
from traitflow.config import Settings
from traitflow.kafka_client import client_kwargs

log = logging.getLogger(__name__)

#: a record to publish: its key (the profile's userId or anonymousId) and its value
KeyValue = tuple[bytes | None, bytes]


class PublishFailed(TraitflowError):
    """The broker did not acknowledge every record in time: answered 503."""


class Publisher(ABC):
    """Where an API process publishes records; `KafkaPublisher` in production, a list
    in unit tests."""

    async def publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Publish one record; return once the broker acknowledged it, or raise
        `PublishFailed`."""
        await self.publish_batch(topic, [(key, value)])

    @abstractmethod
    async def publish_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        """Publish `records` (key, value) to `topic`, in order per key; return once the
        broker acknowledged every one, or raise `PublishFailed` (some may then have
        been published)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, the list holds nothing
        """Flush and disconnect."""


class KafkaPublisher(Publisher):
    """An aiokafka producer with `acks=all`, started on first use. `client` is what it
    connects with (`traitflow.kafka_client.client_kwargs`: the bootstrap servers, TLS
    and SASL)."""

    def __init__(
        self,
        client: dict[str, Any],
        *,
        timeout_s: float = 5.0,
        max_request_size: int = 1024 * 1024,
    ) -> None:
        self.client = client
        self.bootstrap = client["bootstrap_servers"]
        self.timeout_s = timeout_s
        self.max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaPublisher:
        # a request is one call's events: the body limit bounds it, with room for
        # the fields the API fills in
        size = max(1024 * 1024, 2 * settings.api_max_body_bytes)
        return cls(
            client_kwargs(settings), timeout_s=settings.ingest_timeout_s, max_request_size=size
        )

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self.client,
                    acks="all",
                    linger_ms=1,  # concurrent calls share a produce request
                    max_request_size=self.max_request_size,
                    request_timeout_ms=int(self.timeout_s * 1000),
                )
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await producer.start()
                except (KafkaError, OSError, TimeoutError) as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    log.warning("ingest: broker at %s not reachable: %r", self.bootstrap, exc)
                    raise PublishFailed(f"broker not reachable: {exc!r}") from exc
                self._producer = producer
        return self._producer

    async def publish_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = await self._started()
                deliveries = [await producer.send(topic, value, key=key) for key, value in records]
                await asyncio.gather(*deliveries)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("ingest: %d records to %s not acknowledged: %r", len(records), topic, exc)
            raise PublishFailed(f"broker did not acknowledge: {exc!r}") from exc

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout_s):
                    await producer.stop()


class ListPublisher(Publisher):
    """Keeps what it is given (unit tests); `fail` makes every publish fail."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.fail = False

    async def publish_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        if self.fail:
            raise PublishFailed("broker not reachable (test)")
        self.records.extend((topic, key, value) for key, value in records)
