"""Redis memory per profile: N synthetic users written as the worker writes them, measured.

    python -m bench.memory --profiles 50000 [--events 8 --batch 2000 --sample 2000]

Starts its own redis-server (the embedded service's configuration, on a free port, in
a temporary directory, stopped and removed at the end): `used_memory` must count this
run's keys and nothing else, so it never uses TRAITFLOW_REDIS_URL. Then computes the
profiles of `--profiles` users with examples/rules.yaml through `BatchProcessor` on
`RedisProfileStore`, wired as the worker wires them (state cache, log checkpoints,
messageId dedupe, user and account entities), in batches, and reports:
- Redis `used_memory` after minus before, per profile: what a profile really costs,
  Redis's keyspace tables and allocator rounding included;
- `MEMORY USAGE` (key, value and per-key overhead) of each kind of key: a profile's
  state, view, version and identity indexes on a sample of `--sample` profiles; the
  expiry sorted sets (one per input partition) whole, divided by the profiles; the
  applied-messageId sets whole, per event (they hold each event's id for the dedupe
  window, 7 days, so they follow the event rate, not the profile count);
- what a state's msgpack is made of (attribute states, traits, identities, offsets);
- those figures at 1M profiles, linearly.

The events: each user's browsing starts anonymous (1-2 page views with only an
`anonymousId`, keyed by it, so on another partition), then an identify with `userId`,
`anonymousId` and traits (email, name, plan), then product views (55%), orders (25%)
and pages (20%) with both ids: `--events` per user on average (at least 4), over the
last 7 days, all users interleaved in time order, each with a Segment-like `context`.
So each profile has absorbed an anonymous one and holds three identities (user_id,
email, anonymous_id). Batches are processed as if live: the processor's clock is the
batch's latest event time, so windows and lateness judge them as a running worker
would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
import redis

from attributes.identities import IdentityRules
from attributes.profile import ProfileState, decode_state
from attributes.rules import load_rules
from bench.pipeline import CATEGORIES
from streams.app import redis_profiles, worker_processor
from streams.processor import ListDeadLetters, Record
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.runtime import tune_gc
from traitflow.services import Service, free_port
from traitflow.state_cache import CachedProfileStore

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
#: what a key's second part says it is (traitflow.store.KeyLayout)
KINDS = {
    "s": "state",
    "v": "view",
    "n": "version",
    "i": "index",
    "x": "expiry zset",
    "d": "applied messageIds",
    "l": "log checkpoints",
    "e": "log epoch",
}
PER_PROFILE = ("state", "view", "version")
INDEXES = ("user_id", "email", "anonymous_id")
PLANS = ("free", "pro", "business")
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"


def _uuid(rng: random.Random) -> str:
    text = f"{rng.getrandbits(128):032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def user_events(n: int, events: int, end_ms: int, rng: random.Random) -> list[dict[str, Any]]:
    """One user's events, oldest first (see the module's docstring)."""
    user, anonymous = f"mem-user-{n}", _uuid(rng)
    count = rng.randint(4, max(4, 2 * events - 4))
    start = end_ms - rng.randrange(7 * DAY_MS)
    times = sorted(start + rng.randrange(max(1, end_ms - start)) for _ in range(count))
    context = {
        "library": {"name": "analytics.js", "version": "5.2.0"},
        "userAgent": AGENT,
        "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}",
        "locale": "en-GB",
    }
    out: list[dict[str, Any]] = []
    anonymous_pages = rng.randint(1, 2)
    for i, ts in enumerate(times):
        event: dict[str, Any] = {
            "anonymousId": anonymous,
            "messageId": _uuid(rng),
            "timestamp": _iso(ts),
            "context": context,
        }
        if i >= anonymous_pages:
            event["userId"] = user
        roll = rng.random()
        if i < anonymous_pages or (i > anonymous_pages and roll >= 0.80):
            path = rng.choice(["/", "/sale", "/account", "/help"])
            event |= {"type": "page", "properties": {"path": path, "url": f"https://shop{path}"}}
        elif i == anonymous_pages:
            event |= {
                "type": "identify",
                "traits": {
                    "email": f"{user}@example.com",
                    "name": f"User {n}",
                    "plan": rng.choice(PLANS),
                },
            }
        elif roll < 0.55:
            event |= {
                "type": "track",
                "event": "Product Viewed",
                "properties": {
                    "product_id": f"sku-{rng.randrange(500)}",
                    "category": rng.choice(CATEGORIES),
                    "price": rng.randrange(500, 20_000) / 100,
                },
            }
        else:
            event |= {
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "order_id": _uuid(rng),
                    "revenue": rng.randrange(100, 50_000) / 100,
                    "currency": rng.choice(["EUR", "EUR", "USD"]),
                    "product_id": f"sku-{rng.randrange(500)}",
                },
            }
        out.append(event)
    return out


def make_records(
    profiles: int, events: int, seed: int, topic: str, partitions: int, end_ms: int
) -> list[Record]:
    """Every user's events in time order, keyed as producers key them (the userId, else
    the anonymousId) onto `partitions` partitions of `topic`."""
    rng = random.Random(seed)
    timed: list[tuple[int, bytes, bytes]] = []
    for n in range(profiles):
        for event in user_events(n, events, end_ms, rng):
            key = (event.get("userId") or event["anonymousId"]).encode()
            ts = int(datetime.fromisoformat(event["timestamp"]).timestamp() * 1000)
            timed.append((ts, key, orjson.dumps(event)))
    timed.sort(key=lambda item: item[0])
    offsets = [0] * partitions
    records = []
    for ts, key, value in timed:
        partition = zlib.crc32(key) % partitions
        records.append(Record(topic, partition, offsets[partition], value, ts))
        offsets[partition] += 1
    return records


async def write_profiles(
    settings: Settings, records: list[Record], batch: int
) -> tuple[float, Counter[str]]:
    """Apply `records` in batches as the worker does; the seconds it took, and the
    batches' merges, skips and dead letters."""
    entities = {entity: IdentityRules(spec) for entity, spec in settings.entities.items()}
    rules = load_rules(ROOT / "examples" / "rules.yaml", entities)
    profiles = redis_profiles(settings)
    now = [0.0]
    store = CachedProfileStore(profiles, settings.state_cache_profiles)
    processor = worker_processor(
        settings, rules, profiles, store=store, dead_letters=ListDeadLetters(), clock=lambda: now[0]
    )
    seen: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        for first in range(0, len(records), batch):
            chunk = records[first : first + batch]
            now[0] = chunk[-1].timestamp_ms / 1000 + 1.0  # processed a second later
            report = await processor.process(chunk)
            seen.update(merges=report.merges, dead_letters=report.dead_lettered)
            seen.update(f"skipped: {skip.kind}" for skip in report.skips)
    finally:
        await profiles.close()
    return time.perf_counter() - started, seen


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


#: What MEMORY STATS's table overhead counts per key besides the bucket arrays: in the
#: main table Redis 7.0's dict entry and the value's object header (24 + 16 bytes), in
#: the expiry table the entry alone; `MEMORY USAGE` of the key includes both already
#: (checked: 700,000 keys, 2**20 buckets, overhead.hashtable.main 36,388,608 bytes).
MAIN_ENTRY, EXPIRES_ENTRY = 40, 24


def keyspace_buckets(client: redis.Redis) -> int:
    """The bytes of database 0's key tables' bucket arrays (keys, and keys with a TTL):
    the per-key cost `MEMORY USAGE` of the keys leaves out."""
    tables = client.memory_stats().get("db.0") or {}
    counts = client.info("keyspace").get("db0") or {}
    main = int(tables.get("overhead.hashtable.main", 0))
    expires = int(tables.get("overhead.hashtable.expires", 0))
    main -= MAIN_ENTRY * int(counts.get("keys", 0))
    expires -= EXPIRES_ENTRY * int(counts.get("expires", 0))
    return main + expires


def key_kind(key: bytes, prefix: str) -> str:
    parts = key.decode().removeprefix(f"{prefix}:").split(":")
    kind = KINDS.get(parts[0], "other")
    return f"index {parts[2]}" if kind == "index" else kind


def memory_usage(client: redis.Redis, keys: list[str]) -> list[int]:
    """MEMORY USAGE of each key, over every element of collections (SAMPLES 0)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return [int(size or 0) for size in pipe.execute()]


@dataclass
class Measured:
    #: kind of key -> how many there are
    keys: Counter[str]
    #: (kind, bytes per profile, how it was measured), for the keys a profile owns
    rows: list[tuple[str, float, str]]
    #: the applied-messageId sets: bytes in all, and the ids they hold
    message_bytes: int
    messages: int
    #: the log checkpoints and epochs: bytes in all
    log_bytes: int
    #: part of a state (each attribute's indented) -> its mean msgpack bytes
    state_parts: dict[str, float]
    #: the bucket arrays of the keyspace's tables (`keyspace_buckets`)
    key_buckets: int
    redis_version: str


_encode = msgspec.msgpack.Encoder().encode
#: ProfileState's fields, as the breakdown of a state names them
_PART = {
    "attributes": "attribute states",
    "identities": "identities",
    "source_traits": "traits",
    "offsets": "applied offsets",
    "recent": "applied offsets",
}


def measure(client: redis.Redis, prefix: str, profiles: int, sample: int) -> Measured:
    layout = KeyLayout(prefix)
    by_kind: dict[str, list[str]] = {}
    for key in client.scan_iter(match=layout.all_keys(), count=10_000):
        by_kind.setdefault(key_kind(key, prefix), []).append(key.decode())
    users = random.Random(1).sample(range(profiles), min(sample, profiles))
    rows: list[tuple[str, float, str]] = []
    for kind in PER_PROFILE:
        sizes = memory_usage(
            client, [getattr(layout, kind)("user", f"mem-user-{n}") for n in users]
        )
        rows.append((kind, sum(sizes) / len(sizes), f"mean of {len(sizes):,} profiles"))
    for index in INDEXES:
        found = by_kind.get(f"index {index}", [])
        sizes = memory_usage(client, random.Random(2).sample(found, min(sample, len(found))))
        rows.append((f"index {index}", sum(sizes) / max(1, len(sizes)), f"mean of {len(sizes):,}"))
    zsets = by_kind.get("expiry zset", [])
    scheduled = sum(int(client.zcard(key)) for key in zsets)
    zset_bytes = sum(memory_usage(client, zsets))
    rows.append(
        ("expiry zset", zset_bytes / profiles, f"{len(zsets)} sets, {scheduled:,} profiles in")
    )
    # the client does not decode replies: values are bytes
    raws = cast(
        "list[bytes | None]", client.mget([layout.state("user", f"mem-user-{n}") for n in users])
    )
    states = [decode_state(raw) for raw in raws if raw is not None]
    parts: Counter[str] = Counter()
    for state in states:
        for part in msgspec.structs.fields(ProfileState):
            value = getattr(state, part.name)
            parts[_PART.get(part.name, "other")] += len(_encode(value))
            if part.name == "attributes":
                parts.update({f"  {key}": len(_encode(v)) for key, v in value.items()})
    message_sets = by_kind.get("applied messageIds", [])
    logs = by_kind.get("log checkpoints", []) + by_kind.get("log epoch", [])
    return Measured(
        keys=Counter({kind: len(found) for kind, found in by_kind.items()}),
        rows=rows,
        message_bytes=sum(memory_usage(client, message_sets)),
        messages=sum(int(client.scard(key)) for key in message_sets),
        log_bytes=sum(memory_usage(client, logs)),
        state_parts={part: size / max(1, len(states)) for part, size in parts.items()},
        key_buckets=keyspace_buckets(client),
        redis_version=str(client.info("server")["redis_version"]),
    )


@dataclass
class Run:
    profiles: int
    events: int
    seconds: float
    #: the batches' merges, skips and dead letters
    seen: Counter[str]
    #: Redis's used_memory before and after the profiles were written
    before: int
    after: int


def print_report(run: Run, found: Measured) -> None:
    n, events = run.profiles, run.events
    per_profile = (run.after - run.before - found.message_bytes - found.log_bytes) / n
    per_event = found.message_bytes / max(1, found.messages)
    print(f"profiles          {n:,}, {events:,} events ({events / n:.1f} per profile), "
          f"written in {run.seconds:.1f} s ({events / run.seconds:,.0f} events/s)")  # fmt: skip
    print("batches           " + ", ".join(f"{k} {v:,}" for k, v in sorted(run.seen.items())))
    print("keys              " + ", ".join(f"{k} {v:,}" for k, v in sorted(found.keys.items())))
    print(f"redis-server      {found.redis_version}; used_memory {run.before:,} -> {run.after:,}")
    print(f"{'key kind':<20}{'bytes/profile':>14}  measured with MEMORY USAGE")
    for kind, size, how in found.rows:
        print(f"{kind:<20}{size:>14,.0f}  {how}")
    buckets = found.key_buckets / n
    print(f"{'key table buckets':<20}{buckets:>14,.0f}  Redis's keyspace (MEMORY STATS)")
    print(f"{'sum':<20}{sum(size for _, size, _ in found.rows) + buckets:>14,.0f}")
    print(f"{'used_memory delta':<20}{per_profile:>14,.0f}  per profile, without the "
          f"messageId sets and log checkpoints")  # fmt: skip
    parts = found.state_parts.items()
    print("a state's parts    " + ", ".join(
        f"{part} {size:,.0f}" for part, size in parts if part[0] != " "
    ) + " bytes of msgpack")  # fmt: skip
    largest = sorted(((size, part.strip()) for part, size in parts if part[0] == " "))[::-1]
    print("  largest attributes " + ", ".join(f"{part} {size:,.0f}" for size, part in largest[:5]))
    print(f"applied messageIds  {found.message_bytes:,} bytes: {per_event:,.0f} per event, "
          f"{found.messages:,} remembered for the dedupe window")  # fmt: skip
    print(f"log checkpoints     {found.log_bytes:,} bytes in all")
    gib = 1e6 / 2**30
    print(f"at 1M profiles      {per_profile * gib:.2f} GiB, + {per_event * gib:.3f} GiB per "
          f"event per profile within the dedupe window ({events / n * per_event * gib:.2f} GiB "
          f"at {events / n:.1f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=8, help="events per user, on average")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sample", type=int, default=2000, help="profiles measured per kind")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="traitflow-bench-memory-"))
    server = Service("redis", directory, "127.0.0.1", free_port())
    settings = Settings.from_environ(os.environ, redis_url=f"redis://{server.host}:{server.port}/0")
    topic = next(iter(settings.sources))
    # its logins link devices to users, as a trusted source's do (README, Trusted links)
    trusted = {settings.sources[topic]: "trusted"}
    settings = Settings.from_environ(os.environ, redis_url=settings.redis_url, source_trust=trusted)
    records = make_records(
        args.profiles, args.events, args.seed, topic, args.partitions, int(time.time() * 1000)
    )
    tune_gc()
    try:
        server.start()
        client = redis.Redis.from_url(settings.redis_url)
        before = used_memory(client)
        seconds, seen = asyncio.run(write_profiles(settings, records, args.batch))
        run = Run(args.profiles, len(records), seconds, seen, before, used_memory(client))
        found = measure(client, settings.key_prefix, args.profiles, args.sample)
        client.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print_report(run, found)


if __name__ == "__main__":
    main()
