"""Counting each event once: a producer's retry (the same messageId again), and a
batch that commits in parts while another worker merges what it touches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest

from attributes.ruleset import RuleSet
from streams.processor import BatchProcessor, BatchReport, ListDeadLetters, Record
from tests.unit.trust_support import trusting
from traitflow.memory_store import MemoryProfileStore
from traitflow.store import Expected, ProfileWrite

pytestmark = pytest.mark.anyio

NOW_S = 1_794_394_800.0  # 2026-11-11T11:00:00Z
BROKER_MS = int(NOW_S * 1000) - 60_000
WEB, CRM, APP = "web-events", "crm-events", "app-events"
#: two topics of one source (an app and a site sending through one pipeline), one other
SOURCES = {WEB: "web", APP: "web", CRM: "crm"}

Hook = Callable[[], Awaitable[Any]]


class Interleaved(MemoryProfileStore):
    """Runs another worker's work at chosen points of this worker's commits: `before`
    the next commit is checked, or `after` it is written (each hook runs once)."""

    def __init__(self) -> None:
        super().__init__()
        self.before: list[Hook] = []
        self.after: list[Hook] = []
        self._hooking = False

    async def _run(self, hooks: list[Hook]) -> None:
        if hooks and not self._hooking:
            self._hooking = True
            try:
                await hooks.pop(0)()
            finally:
                self._hooking = False

    async def commit(
        self,
        entity: str,
        writes: Sequence[ProfileWrite],
        removed: Sequence[str] = (),
        expected: Expected | None = None,
    ) -> None:
        await self._run(self.before)
        await super().commit(entity, writes, removed=removed, expected=expected)
        await self._run(self.after)


class Worker:
    def __init__(self, rules: RuleSet, store: MemoryProfileStore, dedupe: bool = True) -> None:
        self.store = store
        self.dead_letters = ListDeadLetters()
        self.processor = BatchProcessor(
            rules,
            store,
            self.dead_letters,
            clock=lambda: NOW_S,
            sources=SOURCES,
            dedupe=dedupe,
            trust=trusting(*SOURCES.values()),
        )

    async def send(self, *records: Record) -> BatchReport:
        report = await self.processor.process(records)
        assert self.dead_letters.records == []
        return report


def order(mid: str | None, revenue: float, **ids: str) -> dict[str, Any]:
    value: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "properties": {"revenue": revenue, "product_id": "sku"},
        **ids,
    }
    if mid is not None:
        value["messageId"] = mid
    return value


def at(topic: str, partition: int, offset: int, value: dict[str, Any]) -> Record:
    return Record(topic, partition, offset, orjson.dumps(value), BROKER_MS)


async def revenue(store: MemoryProfileStore, index: str, value: str) -> Any:
    raw = await store.read_view("user", index, value)
    return None if raw is None else orjson.loads(raw)["attributes"]["lifetime_value"]


# --- a producer's retry -------------------------------------------------------------------


async def test_a_producer_retry_counts_once(example_rules: RuleSet) -> None:
    worker = Worker(example_rules, MemoryProfileStore())
    orders = [order(f"m-{n}", 10.0 * n, userId="u-1") for n in range(1, 6)]
    await worker.send(*(at(WEB, 0, n, value) for n, value in enumerate(orders)))
    views = dict(worker.store.views)
    # the same events again at new offsets: what an SDK or a destination's retry sends
    report = await worker.send(*(at(WEB, 0, 10 + n, value) for n, value in enumerate(orders)))
    assert (report.duplicates, report.profiles_written) == (5, 0)
    assert worker.store.views == views
    assert await revenue(worker.store, "user_id", "u-1") == 150.0


async def test_a_retry_in_the_same_batch_counts_once(example_rules: RuleSet) -> None:
    worker = Worker(example_rules, MemoryProfileStore())
    first = order("m-1", 10.0, userId="u-1")
    report = await worker.send(at(WEB, 0, 0, first), at(WEB, 1, 0, first), at(WEB, 0, 1, first))
    assert report.duplicates == 2
    assert await revenue(worker.store, "user_id", "u-1") == 10.0


async def test_message_ids_are_per_source(example_rules: RuleSet) -> None:
    """One id from two sources is two events; from two topics of one source, one."""
    worker = Worker(example_rules, MemoryProfileStore())
    same = order("m-1", 10.0, userId="u-1")
    report = await worker.send(at(WEB, 0, 0, same), at(CRM, 0, 0, same), at(APP, 0, 0, same))
    assert report.duplicates == 1
    assert await revenue(worker.store, "user_id", "u-1") == 20.0


async def test_without_deduplication_a_retry_counts_twice(example_rules: RuleSet) -> None:
    """What the setting turns off (and what the tests above would see without it)."""
    worker = Worker(example_rules, MemoryProfileStore(), dedupe=False)
    same = order("m-1", 10.0, userId="u-1")
    await worker.send(at(WEB, 0, 0, same))
    await worker.send(at(WEB, 0, 1, same))
    assert await revenue(worker.store, "user_id", "u-1") == 20.0


async def test_events_without_a_message_id_keep_the_offset_guard(example_rules: RuleSet) -> None:
    worker = Worker(example_rules, MemoryProfileStore())
    anonymous = order(None, 10.0, userId="u-1")
    await worker.send(at(WEB, 0, 0, anonymous))
    replay = await worker.send(at(WEB, 0, 0, anonymous))  # redelivered: same offset
    assert replay.duplicates == 1
    await worker.send(at(WEB, 0, 1, anonymous))  # nothing says it is the same event
    assert await revenue(worker.store, "user_id", "u-1") == 20.0


async def test_a_retry_applied_by_two_workers_at_once_counts_once(
    example_rules: RuleSet,
) -> None:
    """A retry produced under another key reaches a second worker, which commits it
    while the first is between its reads and its commit. A retry is the same event:
    same identities, so the same profile, whose version the first worker's commit
    finds changed; computed again, the event is found applied."""
    store = Interleaved()
    first, second = Worker(example_rules, store), Worker(example_rules, store)
    retry = order("m-1", 10.0, anonymousId="a-1")
    store.before.append(lambda: second.send(at(WEB, 1, 0, retry)))
    report = await first.send(at(WEB, 0, 0, retry))
    assert (report.conflicts, report.duplicates, report.profiles_written) == (1, 1, 0)
    assert await revenue(store, "anonymous_id", "a-1") == 10.0


# --- a batch committed in parts, then a merge -------------------------------------------------

#: the first worker's batch: offset 50 for anonymous a-2, offset 100 for user u-1
SPLIT_BATCH = (
    at(WEB, 0, 50, order(None, 5.0, anonymousId="a-2")),
    at(WEB, 0, 100, order(None, 7.0, userId="u-1")),
)


def split_then_merge(
    rules: RuleSet, then: Callable[[Worker], Awaitable[Any]] | None = None
) -> tuple[Interleaved, Worker]:
    """A store on which the first worker's commit of `SPLIT_BATCH` conflicts on a-2
    only (the second worker wrote it just before), and on which, right after u-1's part
    is committed, the second worker merges a-2 into u-1 (then does `then`)."""
    store = Interleaved()
    first, second = Worker(rules, store), Worker(rules, store)
    login = {"type": "identify", "userId": "u-1", "anonymousId": "a-2"}

    async def merge() -> None:
        await second.send(at(WEB, 1, 1, login))
        if then is not None:
            await then(second)

    store.before.append(lambda: second.send(at(WEB, 1, 0, {"type": "page", "anonymousId": "a-2"})))
    store.after.append(merge)
    return store, first


async def test_a_merge_between_a_split_commit_and_its_redo_loses_nothing(
    example_rules: RuleSet,
) -> None:
    """u-1's part is committed and a-2's is to be computed again; before it is, a-2 is
    merged into u-1. The merged profile holds offset 100 of the partition but not 50:
    the redo must apply it (taking the higher offset as applied lost it)."""
    store, first = split_then_merge(example_rules)
    report = await first.send(*SPLIT_BATCH)
    assert report.conflicts == 1
    assert await revenue(store, "user_id", "u-1") == 12.0
    assert await revenue(store, "anonymous_id", "a-2") == 12.0


class Crash(BaseException):
    pass


async def crash(_: Worker) -> None:
    raise Crash


async def test_a_crash_between_a_split_commit_and_its_redo_loses_nothing(
    example_rules: RuleSet,
) -> None:
    """As above, but the first worker dies before the redo; the batch is read again (by
    a new worker) from its first offset: 50 is applied, 100 is not applied twice."""
    store, first = split_then_merge(example_rules, then=crash)
    with pytest.raises(Crash):
        await first.send(*SPLIT_BATCH)
    assert await revenue(store, "user_id", "u-1") == 7.0  # u-1's part was committed

    report = await Worker(example_rules, store).send(*SPLIT_BATCH)
    assert report.duplicates == 1
    assert await revenue(store, "user_id", "u-1") == 12.0
