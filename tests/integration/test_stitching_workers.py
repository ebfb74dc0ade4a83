"""Identity stitching through two real worker processes and a real broker.

Randomised anonymous -> login -> CRM flows, their events keyed by whichever id the
sender had (so one person's events cross partitions, hence workers), produced in waves.
Every person must be one profile equal to the batch oracle fed all of their events
under one id, by whichever identity it is read.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from streams.processor import ENTITY
from tests.integration.conftest import wait_until
from tests.integration.stitching_support import (
    Event,
    comparable,
    event,
    figure,
    order,
    person_oracle,
    viewed,
)
from tests.integration.workers import alive, start_worker, worker_log
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.redis_store import RedisProfileStore
from traitflow.services import Daemon, free_port
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration


# --- end to end: two worker processes, each person's events on several partitions ----

PERSONS = 40
WAVES = 3
PRODUCTS = [("sku-1", "books"), ("sku-2", "garden"), ("sku-3", "toys"), ("sku-4", "kitchen")]


@dataclass
class Person:
    user: str
    email: str
    devices: list[str]
    #: (event, the key it is produced with)
    events: list[tuple[Event, str]] = field(default_factory=list)

    def add(self, event: Event, key: str) -> None:
        event["messageId"] = f"{self.user}-{len(self.events)}"
        self.events.append((event, key))


def make_person(rng: random.Random, i: int) -> Person:
    """Browses anonymously on one or two devices, logs in on each (the first login
    gives the email), orders, and is updated by a CRM that knows only the email (in
    another case). Each event is keyed by the id it carries, as a producer would."""
    devices = [f"anon-{i}-{d}" for d in range(rng.randrange(1, 3))]
    person = Person(f"user-{i}", f"person.{i}@example.com", devices)
    minutes_ago = iter(range(600, 0, -7))  # event times follow the flow
    for device in devices:
        for _ in range(rng.randrange(1, 4)):
            sku, category = rng.choice(PRODUCTS)
            at = next(minutes_ago)
            browse = viewed("", at, sku, category) if rng.random() < 0.5 else event("", at)
            person.add(browse | {"anonymousId": device}, device)
    for d, device in enumerate(devices):
        traits = {"email": person.email, "name": f"P{i}"} if d == 0 else {}
        ids = {"userId": person.user, "anonymousId": device}
        person.add(event("", next(minutes_ago), "identify", traits=traits, **ids), device)
    for _ in range(rng.randrange(1, 4)):
        revenue, sku = rng.randrange(100, 20_000) / 4, rng.choice(PRODUCTS)[0]
        person.add(order("", next(minutes_ago), revenue, sku, userId=person.user), person.user)
    crm = {"email": f" {person.email.upper()} ", "plan": rng.choice(["free", "pro"])}
    person.add(event("", next(minutes_ago), "identify", traits=crm), person.email)
    return person


async def produce(settings: Settings, events: Sequence[tuple[Event, str]]) -> list[int]:
    """Publish keyed events; return the partition each one landed on."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        topic = next(iter(settings.sources))
        sent = [await producer.send(topic, orjson.dumps(e), key=k.encode()) for e, k in events]
        return [(await delivery).partition for delivery in sent]
    finally:
        await producer.stop()


def assigned(daemon: Daemon, topic: str) -> set[int]:
    """The worker's partitions of `topic`, as its log last reported them (Faust writes
    ranges: `{0-2, 5}`)."""
    alive(daemon)
    tables = re.findall(rf"\| {re.escape(topic)}\s*\| \{{([\d, -]*)\}}", worker_log(daemon))
    partitions: set[int] = set()
    for part in tables[-1].split(",") if tables else ():
        first, _, last = part.strip().partition("-")
        partitions.update(range(int(first), int(last or first) + 1))
    return partitions


def counter(ports: Sequence[int], name: str) -> float:
    """A counter of the workers serving metrics on `ports`, summed."""
    total = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        found = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
        total += float(found.group(1)) if found else 0.0
    return total


def applied(redis_client: redis.Redis, keys: KeyLayout, events: int) -> bool:
    """Whether `events` events are applied. A profile's version counts the events
    applied to it, a merge adds the absorbed one's: the sum over every stored profile
    counts every event applied, once (a re-read record changes nothing)."""
    names = list(redis_client.scan_iter(keys.version(ENTITY, "*"), count=1000))
    total = sum(int(v) for v in redis_client.mget(names) if v) if names else 0
    assert total <= events, f"{total} events applied, {events} published"
    return total == events


async def served_views(settings: Settings, persons: Sequence[Person]) -> list[list[bytes | None]]:
    """Each person's view read by each of its identities (as the API reads them)."""
    store = RedisProfileStore.from_url(settings.redis_url, settings.key_prefix)
    try:
        views = []
        for p in persons:
            lookups = [("user_id", p.user), ("email", p.email)]
            lookups += [("anonymous_id", device) for device in p.devices]
            views.append(await store.read_views(ENTITY, lookups))
        return views
    finally:
        await store.close()


def test_two_workers_stitch_each_person_into_the_oracle_s_profile(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Published in waves, each applied before the next: every worker then holds cached
    states that the other one's writes have made stale."""
    started = time.monotonic()
    settings = settings.isolated(
        f"tfst-{uuid.uuid4().hex[:8]}", topic_partitions=4, batch_size=8, home=tmp_path
    )
    topic = next(iter(settings.sources))
    asyncio.run(ensure_topics(settings))
    keys = KeyLayout(settings.key_prefix)
    rng = random.Random(23)
    persons = [make_person(rng, i) for i in range(PERSONS)]
    stream = [(person, e, key) for person in persons for e, key in person.events]
    rng.shuffle(stream)  # persons interleaved, each one's flow out of order in places
    ports = [free_port(), free_port()]
    workers = [
        start_worker(settings.model_copy(update={"worker_metrics_port": port}), name)
        for name, port in zip(("first", "second"), ports, strict=True)
    ]
    try:

        def split() -> bool:
            first, second = (assigned(worker, topic) for worker in workers)
            return bool(first and second) and not first & second and len(first | second) == 4

        wait_until(split, timeout=30, what="both workers to own partitions")
        partitions: list[int] = []
        for wave in range(WAVES):
            partitions += asyncio.run(
                produce(settings, [(e, k) for _, e, k in stream[wave::WAVES]])
            )
            wait_until(partial(applied, redis_client, keys, len(partitions)), what=f"wave {wave}")
        owner = {p: w for w, worker in enumerate(workers) for p in assigned(worker, topic)}
        through: dict[str, set[int]] = {}
        for (person, _, _), partition in zip(stream, partitions, strict=True):
            through.setdefault(person.user, set()).add(owner[partition])
        both = sum(len(owners) == 2 for owners in through.values())
        assert both >= PERSONS // 2, "too few persons' events went through both workers"

        served = asyncio.run(served_views(settings, persons))
        for person, views in zip(persons, served, strict=True):
            expected = person_oracle(settings, [e for e, _ in person.events], person.user)
            for view in views:
                assert view is not None, person.user
                assert comparable(orjson.loads(view)) == expected, person.user
        profiles = redis_client.scan_iter(keys.view_prefix(ENTITY) + "*", count=1000)
        assert len(list(profiles)) == PERSONS, "profiles left unmerged"
        for metric in ("traitflow_commit_conflicts", "traitflow_profile_merges"):
            figure(request, metric, counter(ports, metric))
        figure(request, "persons_through_both_workers", both)
        figure(request, "seconds", round(time.monotonic() - started, 1))
    finally:
        for worker in workers:
            worker.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)
