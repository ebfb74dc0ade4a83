"""Stalls, injected into real workers: a dead-letter topic that refuses every letter
does not stall ingestion (the letters are parked, counted, and replayed once the
cause is fixed), and a batch that cannot be written shows in the worker's metrics."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis

from attributes.identities import DEFAULT_ACCOUNT, EntitySpec
from tests.integration.conftest import wait_until
from tests.integration.dead_letter_support import (
    dead_letters_cli,
    parked_letters,
    sample,
    samples_named,
    scrape,
)
from tests.integration.workers import alive, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import free_port
from traitflow.topics import ensure_topics, publish_lines

pytestmark = pytest.mark.integration

#: users identified by user_id only: an event with just an anonymousId is a dead letter
USER_IDS_ONLY = {
    "user": EntitySpec.model_validate(
        {"identities": [{"type": "user_id", "paths": ["userId"], "limit": 1}]}
    ),
    "account": DEFAULT_ACCOUNT,
}


def publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    topic = next(iter(settings.sources))
    asyncio.run(publish_lines(settings, topic, [orjson.dumps(e) for e in events]))


def test_a_dead_letter_topic_that_refuses_letters_does_not_stall_ingestion(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The worker's dead-letter topic has a name Kafka refuses (Tansu creates missing
    topics, so a missing one cannot be had). Its letters are parked within the retry
    budget and the events after them are processed; after the fix (a valid topic, and
    anonymous ids as identities), a replay of the parked letters applies them."""
    name = f"tfstall-{uuid.uuid4().hex[:8]}"
    broken = settings.isolated(
        name,
        home=settings.home,
        dead_letter_topic="no such topic!",
        entities=USER_IDS_ONLY,
        dead_letter_timeout_s=2.0,
        worker_metrics_port=free_port(),
    )
    asyncio.run(ensure_topics(broken, broken.sources))
    keys = KeyLayout(broken.key_prefix)
    daemon = start_worker(broken, "worker-refused-letters")
    try:
        key = f"k-{uuid.uuid4().hex[:8]}"  # the two events share a partition (same key)
        anonymous = {"type": "page", "anonymousId": key, "properties": {"path": "/a"}}
        publish(broken, [anonymous, {"type": "page", "userId": key}])
        wait_until(
            lambda: alive(daemon) and redis_client.exists(keys.view("user", key)),
            timeout=90,
            what="the event after the dead letter to be processed",
        )
        parked = wait_until(lambda: parked_letters(broken), what="the letter to be parked")
        assert [letter.value for letter in parked] == [orjson.dumps(anonymous)]
        assert parked[0].reason.startswith(
            "event carries no identity of any entity (user: user_id;"
        )
        assert parked[0].error  # why the topic refused it: e.g. a timeout
        samples = scrape(broken)
        assert sum(samples_named(samples, "traitflow_dead_letters_parked_total").values()) == 1
        assert sample(samples, "traitflow_parked_dead_letters") == 1
        listed = dead_letters_cli(broken, "list", "--parked")
        assert listed.exit_code == 0, listed.output
        assert parked[0].id in listed.stdout
        assert "event carries no identity of any entity" in listed.stdout
    finally:
        daemon.stop()

    fixed = settings.isolated(name, home=settings.home)  # same topics, group and keys
    asyncio.run(ensure_topics(fixed))
    daemon = start_worker(fixed, "worker-fixed")
    try:
        replayed = dead_letters_cli(fixed, "replay", "--parked")
        assert replayed.exit_code == 0, replayed.output
        assert "published 1 dead letters" in replayed.stdout
        wait_until(
            lambda: alive(daemon) and redis_client.exists(keys.view("user", f"anonymous_id:{key}")),
            timeout=90,
            what="the replayed event to be applied",
        )
        assert parked_letters(fixed) == []
    finally:
        daemon.stop()


def test_a_batch_that_cannot_be_written_shows_in_retries_lag_and_age(settings: Settings) -> None:
    """A worker whose Redis does not answer retries its batch forever: the retries are
    counted as transient, the partitions' lag stays above 0 and grows with the backlog,
    and the oldest unprocessed record ages."""
    no_redis = settings.isolated(
        f"tfstall-{uuid.uuid4().hex[:8]}",
        home=settings.home,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        worker_metrics_port=free_port(),
    )
    asyncio.run(ensure_topics(no_redis))
    daemon = start_worker(no_redis, "worker-no-redis")
    try:
        publish(no_redis, [{"type": "page", "userId": f"u-{n}"} for n in range(20)])

        def stalled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            alive(daemon)
            try:
                samples = scrape(no_redis)
            except httpx.TransportError:  # not serving metrics yet
                return None
            retries = sample(samples, "traitflow_batch_retries_total", reason="transient")
            lags = samples_named(samples, "traitflow_consumer_lag")
            age = sample(samples, "traitflow_oldest_unprocessed_age_seconds")
            return samples if retries >= 2 and sum(lags.values()) > 0 and age >= 1 else None

        samples = wait_until(stalled, timeout=90, what="the stall in the worker's metrics")
        assert sample(samples, "traitflow_batch_retries_total", reason="error") == 0
        assert sum(samples_named(samples, "traitflow_consumer_lag").values()) <= 20
        lag = sum(samples_named(samples, "traitflow_consumer_lag").values())

        publish(no_redis, [{"type": "page", "userId": f"v-{n}"} for n in range(20)])
        wait_until(
            lambda: sum(samples_named(scrape(no_redis), "traitflow_consumer_lag").values()) > lag,
            what="the lag to grow with the backlog",
        )
    finally:
        daemon.stop(timeout=2)  # its batch never finishes: no graceful stop to wait for
