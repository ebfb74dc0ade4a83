"""Erase requests (GDPR): what `DELETE /access/entities` and `traitflow profiles delete`
do. Neither writes a profile: a request is an `erase` command published to an ingest
topic, applied by the worker that owns its partition in its normal commit
(`attributes.erasure`, `streams.erasures`), the only writer of that partition's
profiles. The request's status is kept in Redis under its id: `pending` when asked,
`applied` (with whether a profile was found) by the commit that erased it.

The command goes to the first configured ingest topic, keyed by the identity's value
(as `traitflow produce` keys an event by its userId or anonymousId), so that it follows
the events already published under that key in its partition.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from attributes.erasure import erase_event, identity_of_profile_id
from attributes.errors import InputError
from attributes.events import iso_from_ms
from attributes.identities import IdentityRules
from traitflow.config import Settings

#: longest identity value an erase request takes (as long as any read takes)
MAX_VALUE_CHARS = 1024


class InvalidErasure(InputError):
    """An erase request names no identity of the entity (an unknown type, no value)."""


def erase_topic(settings: Settings) -> str:
    """The ingest topic erase commands are published to: the first configured."""
    return next(iter(settings.sources))


def new_request_id() -> str:
    return f"er-{uuid.uuid4().hex}"


def target_identity(rules: IdentityRules, namespace: str | None, value: str) -> tuple[str, str]:
    """The (type, value) an erase by `namespace`=`value` names; no namespace: `value`
    is the profile's own id. Raises `InvalidErasure`."""
    if not value.strip() or len(value) > MAX_VALUE_CHARS:
        raise InvalidErasure(f"the identity value must have 1 to {MAX_VALUE_CHARS} characters")
    if namespace is None:
        return identity_of_profile_id(rules, value)
    if namespace not in rules.types:
        raise InvalidErasure(
            f"unknown identity namespace {namespace!r}: use one of {', '.join(rules.types)}"
        )
    return namespace, rules.lookup_value(namespace, value)


def pending_status(request: str, entity: str, now_ms: int) -> bytes:
    status: dict[str, Any] = {
        "id": request,
        "status": "pending",
        "entity": entity,
        "requestedAt": iso_from_ms(now_ms),
    }
    return orjson.dumps(status)


def erase_record(entity: str, identity: tuple[str, str], request: str) -> tuple[bytes, bytes]:
    """(key, value) of the erase command's record."""
    kind, value = identity
    return value.encode(), orjson.dumps(erase_event(entity, kind, value, request))


async def publish_erase(settings: Settings, key: bytes, value: bytes) -> None:
    """Publish one erase command (the CLI's path; the API has its own producer)."""
    from aiokafka import AIOKafkaProducer

    from traitflow.kafka_client import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(erase_topic(settings), value, key=key)
    finally:
        await producer.stop()
