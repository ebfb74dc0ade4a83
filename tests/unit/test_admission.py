"""The checks an event passes before any entity computes it (`attributes.admission`):
the worker dead-letters what they refuse, and HTTP ingest answers 400 for it, with the
same reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.admission import Admission
from attributes.events import InvalidEvent
from attributes.identities import DEFAULT_ACCOUNT, DEFAULT_USER, IdentityRules
from attributes.limits import EventLimits
from attributes.rules import load_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.conftest import EXAMPLES
from traitflow.memory_store import MemoryProfileStore

ADMISSION = Admission(
    {"user": IdentityRules(DEFAULT_USER), "account": IdentityRules(DEFAULT_ACCOUNT)},
    EventLimits(max_identities=2),
)


def test_admission_names_the_entities_that_claim_an_event() -> None:
    raw = orjson.dumps({"type": "group", "userId": "U1", "groupId": "acme"})
    admitted = ADMISSION.admit(raw, now_ms=0, fallback_ms=1234)
    assert admitted.at_ms == 1234
    assert [(c.entity, c.identities) for c in admitted.claims] == [
        ("user", [("user_id", "U1")]),
        ("account", [("account_id", "acme")]),
    ]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"type": "track", "event": "E"}, "carries no identity"),
        (
            {"type": "track", "event": "E", "userId": "u", "anonymousId": "a", "groupId": "g"},
            "identities",
        ),
        ({"type": "bogus", "userId": "u"}, "not a valid event"),
        ({"type": "page", "userId": "u", "timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
    ],
)
def test_admission_refuses_as_the_worker_does(event: dict[str, Any], reason: str) -> None:
    raw = orjson.dumps(event)
    with pytest.raises(InvalidEvent, match=reason):
        ADMISSION.admit(raw, now_ms=0, fallback_ms=0)
    processor = BatchProcessor(
        load_rules(EXAMPLES / "rules.yaml"),
        MemoryProfileStore(),
        ListDeadLetters(),
        identities={"user": IdentityRules(DEFAULT_USER), "account": IdentityRules(DEFAULT_ACCOUNT)},
        limits=EventLimits(max_identities=2),
        clock=lambda: 0.0,  # the time ADMISSION is asked at
    )
    decoded = processor.decode([Record("t", 0, 0, raw, 0)])
    assert [why for _, why in decoded.rejected] == [_reason(raw)]


def _reason(raw: bytes) -> str:
    try:
        ADMISSION.admit(raw, now_ms=0, fallback_ms=0)
    except InvalidEvent as exc:
        return str(exc)
    raise AssertionError("admitted")
