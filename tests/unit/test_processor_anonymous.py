"""Anonymous-only profiles expire when idle (if configured): what each write tells the
store about its keys' lifetime."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from attributes.profile import ProfileState
from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, ListDeadLetters, Record
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import ProfileWrite

pytestmark = pytest.mark.anyio

NOW_S = 1_794_394_800.0
HOUR_MS = 3_600_000


class Recording(MemoryProfileStore):
    """Keeps every write it was asked to commit."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[ProfileWrite] = []

    async def commit(
        self, entity: str, writes: Any, removed: Any = (), expected: Any = None
    ) -> None:
        await super().commit(entity, writes, removed=removed, expected=expected)
        self.written += writes


def worker(rules: RuleSet, store: MemoryProfileStore, ttl_ms: int | None) -> BatchProcessor:
    return BatchProcessor(
        rules,
        store,
        ListDeadLetters(),
        clock=lambda: NOW_S,
        anonymous_ttl_ms=ttl_ms,
        trust=trusting("events"),
    )


def page(offset: int, **ids: str) -> Record:
    value = {"type": "page", "messageId": f"m-{offset}", **ids}
    return Record("events", 0, offset, orjson.dumps(value), int(NOW_S * 1000) - HOUR_MS)


async def test_only_anonymous_profiles_get_an_idle_lifetime(example_rules: RuleSet) -> None:
    store = Recording()
    await worker(example_rules, store, HOUR_MS).process(
        [
            page(0, anonymousId="a-1"),
            page(1, userId="u-1", anonymousId="a-2"),
            page(2, userId="u-2"),
        ]
    )
    assert store.ttls == {("user", "anonymous_id:a-1"): HOUR_MS}
    assert all(write.persist == [] for write in store.written)


async def test_a_login_merges_the_anonymous_profile_into_one_kept_for_good(
    example_rules: RuleSet,
) -> None:
    store = Recording()
    processor = worker(example_rules, store, HOUR_MS)
    await processor.process([page(0, anonymousId="a-1")])
    assert store.ttls == {("user", "anonymous_id:a-1"): HOUR_MS}
    await processor.process([page(1, userId="u-1", anonymousId="a-1")])
    assert store.ttls == {}  # merged away; the user's profile is kept
    survivor = store.written[-1]
    assert (survivor.state.id, survivor.ttl_ms) == ("u-1", None)
    # its anonymous index key is set again by this write, which clears its expiry
    assert ("anonymous_id", "a-1") in survivor.identities


def test_a_profile_linked_to_a_lasting_identity_keeps_its_anonymous_keys(
    example_rules: RuleSet,
) -> None:
    """A profile that held only anonymous ids and is linked to another type without
    a merge: its anonymous index keys, set by earlier writes with an expiry, must lose it."""
    entity = worker(example_rules, MemoryProfileStore(), HOUR_MS).entities["user"]
    state = ProfileState(
        id="anonymous_id:a-1", identities={"anonymous_id": ["a-1", "a-2"], "email": ["e@x.io"]}
    )
    write = ProfileWrite(state, b"", b"{}")
    entity._lifetime(write, [("email", "e@x.io"), ("anonymous_id", "a-2")])
    assert (write.ttl_ms, write.persist) == (None, [("anonymous_id", "a-1")])
    anonymous = ProfileWrite(ProfileState(id="a", identities={"anonymous_id": ["a"]}), b"", b"{}")
    entity._lifetime(anonymous, [("anonymous_id", "a")])
    assert (anonymous.ttl_ms, anonymous.persist) == (HOUR_MS, [])


async def test_without_the_setting_nothing_expires(example_rules: RuleSet) -> None:
    store = Recording()
    await worker(example_rules, store, None).process([page(0, anonymousId="a-1")])
    assert store.ttls == {}
    assert [write.ttl_ms for write in store.written] == [None]


async def test_a_window_moving_renews_the_lifetime(example_rules: RuleSet) -> None:
    store = Recording()
    order = {
        "type": "track",
        "event": "Order Completed",
        "anonymousId": "a-1",
        "timestamp": "2026-10-20T10:00:00Z",  # leaves the 30-day window soon after NOW
        "properties": {"revenue": 5.0, "currency": "EUR"},
    }
    processor = worker(example_rules, store, HOUR_MS)
    await processor.process([Record("events", 0, 0, orjson.dumps(order), 0)])
    processor.clock = lambda: NOW_S + 40 * 86_400
    assert await processor.expire("events/0", 10) == 1
    assert store.written[-1].ttl_ms == HOUR_MS
