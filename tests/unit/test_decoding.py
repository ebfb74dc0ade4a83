"""Decoding a batch (`streams.decoding`): each record is read once into the events its
entities claim, and whatever one record raises makes it alone a dead letter."""

from __future__ import annotations

import logging

import orjson
import pytest

from attributes.rules import load_rules
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.conftest import EXAMPLES
from traitflow.memory_store import MemoryProfileStore


def test_a_record_that_breaks_decoding_is_rejected_alone_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    processor = BatchProcessor(
        load_rules(EXAMPLES / "rules.yaml"), MemoryProfileStore(), ListDeadLetters()
    )
    good = Record("events", 0, 0, orjson.dumps({"type": "identify", "userId": "u1"}), 0)
    empty = Record("events", 0, 1, None, 0)
    breaking = Record("events", 0, 2, b"breaks", 0)
    admit = processor.admission.admit

    def bug(raw: bytes, **kwargs: int) -> object:
        if raw == b"breaks":
            raise KeyError("a bug")
        return admit(raw, **kwargs)

    monkeypatch.setattr(processor.admission, "admit", bug)
    with caplog.at_level(logging.WARNING, logger="streams.processor"):
        decoded = processor.decode([good, empty, breaking])
    assert [item.record for item in decoded.claims["user"]] == [good]
    assert decoded.rejected == [
        (empty, "record has no value"),
        (breaking, "event could not be read: KeyError('a bug')"),
    ]
    assert [r.getMessage() for r in caplog.records] == ["record events/0@2 could not be read"]
