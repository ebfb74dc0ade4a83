"""The fixes to Faust that guarantees rely on apply to any version, apart from the speed
patch; a Faust without a method they wrap fails loudly instead of running without it."""

from __future__ import annotations

from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from attributes.ruleset import RuleSet
from streams import fastfaust, faust_fixes
from streams.app import create_app
from traitflow.config import Settings

pytestmark = pytest.mark.anyio


async def test_the_workers_consumer_fetches_with_the_configured_wait(
    example_rules: RuleSet,
) -> None:
    app = create_app(Settings().isolated("fetch-wait", fetch_wait_ms=7), example_rules)
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.consumer.transport)
    try:
        assert consumer._fetch_max_wait_ms == 7  # Faust's own driver says 1500
    finally:
        await consumer.stop()


def test_the_fixes_do_not_depend_on_the_speed_patchs_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def on_partitions_revoked(self: Any, revoked: Any) -> None: ...

    def _create_worker_consumer(self: Any, transport: Any) -> Any: ...

    # a Faust as it comes (nothing wrapped yet)...
    monkeypatch.setattr(Consumer, "on_partitions_revoked", on_partitions_revoked)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", _create_worker_consumer)
    assert not faust_fixes.installed()
    # ...of a version the speed patch was not made for
    monkeypatch.setattr(fastfaust, "_installed", False)
    monkeypatch.setattr(fastfaust, "PATCHED_VERSIONS", frozenset({"0.0.0"}))
    assert not fastfaust.install()
    faust_fixes.install()
    faust_fixes.install()  # idempotent: wrapped once
    assert faust_fixes.installed()  # ...still gets the fixes


async def test_a_revoke_commits_the_revoked_partitions_before_forgetting_their_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def original(self: Any, revoked: Any) -> None:
        calls.append("forget acks")

    class FakeConsumer:
        app = type("App", (), {"client_only": False})()

        async def commit(self, topics: Any) -> None:
            calls.append(f"commit {sorted(topics)}")

    wrapped = faust_fixes._commit_before_forgetting_revoked_acks(original)
    await wrapped(FakeConsumer(), {"t/0", "t/1"})
    assert calls == ["commit ['t/0', 't/1']", "forget acks"]


def test_a_faust_without_a_wrapped_method_fails_loudly() -> None:
    class Renamed:
        pass

    with pytest.raises(RuntimeError, match=r"Renamed\.on_partitions_revoked is gone"):
        faust_fixes._wrap(Renamed, "on_partitions_revoked", lambda original: original)
