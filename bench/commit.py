"""The commit inside Redis: the commit script against the WATCH + MULTI/EXEC it replaced,
the same plan on the same redis-server, side by side.

    python -m bench.commit [--profiles 200,1400] [--runs 3] [--commits 4]

A redis-server of its own (Debian's, on a free port, no persistence) takes, for each
size, `--commits` commits of a batch of `--profiles` profiles (each a state, a view, a
version, two identities, a messageId and an expiry entry, every profile checked as a
batch that loaded it is: its version and one identity's pointer), alternating the two
ways `--runs` times. Prints, per way: wall ms per commit and ms inside Redis (`INFO
commandstats`), and where Redis's time went for the last run; exits 1 if the two ways
left different data. The WATCH way is kept here only to be measured against; the
worker commits with the script.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from typing import Any, cast

import redis.asyncio as aioredis

from attributes.profile import ProfileState
from traitflow.commit_plan import CommitPlan
from traitflow.commit_script import COMMIT, CommandList, found_values, script_arguments
from traitflow.key_layout import KeyLayout
from traitflow.services import free_port, redis_binary
from traitflow.store import Expected, ProfileWrite

KEYS = KeyLayout("tfbench")
BUCKET_MS = 86_400_000
WINDOW_MS = 7 * BUCKET_MS
NOW = 1_790_000_000_000


def batch(profiles: int, commit: int) -> CommitPlan:
    """The `commit`-th batch over the same profiles: each checks what the one before wrote."""
    writes, versions, pointers = [], {}, {}
    for n in range(profiles):
        pid = f"p{n}"
        write = ProfileWrite(
            ProfileState(id=pid, version=commit + 1), b"s" * 600, b"v" * 800, source="events/0"
        )
        write.identities = [("user_id", pid), ("email", f"{pid}@example.com")]
        write.messages = [("web", f"m-{commit}-{n}")]
        write.expiry = ("events/0", NOW + n)
        writes.append(write)
        versions[pid] = commit or None
        pointers[("email", f"{pid}@example.com")] = pid if commit else None
    expected = Expected(pointers, versions, rules_version=0)
    return CommitPlan.of(KEYS, "user", writes, expected=expected, now=NOW)


async def watch_commit(client: aioredis.Redis, plan: CommitPlan, sha: str) -> None:
    async with client.pipeline(transaction=True) as transaction:
        await transaction.watch(*plan.checks)
        found = cast("list[bytes | None]", await transaction.mget(list(plan.checks)))
        assert plan.conflict(found) is None
        transaction.multi()  # type: ignore[no-untyped-call]
        plan.queue(transaction, bucket_ms=BUCKET_MS, dedupe_window_ms=WINDOW_MS)  # type: ignore[arg-type]
        await transaction.execute()


async def script_commit(client: aioredis.Redis, plan: CommitPlan, sha: str) -> None:
    commands = CommandList()
    plan.queue(commands, bucket_ms=BUCKET_MS, dedupe_window_ms=WINDOW_MS)
    checks = {key: want for key, (want, _) in plan.checks.items()}
    keys, args = script_arguments(checks, commands)
    assert found_values(await client.evalsha(sha, len(keys), *keys, *args)) is None


WAYS = {"watch": watch_commit, "script": script_commit}


async def snapshot(client: aioredis.Redis) -> dict[bytes, Any]:
    """Every key and its value: the two ways must leave the same data."""
    found: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        if kind == b"string":
            found[key] = await client.get(key)
        elif kind == b"set":
            found[key] = sorted(await client.smembers(key))
        elif kind == b"zset":
            found[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            found[key] = kind
    return found


async def measure(port: int, profiles: int, runs: int, commits: int) -> dict[str, Any]:
    client = aioredis.Redis(port=port)
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    spent: dict[str, dict[str, float]] = {}
    left: dict[str, dict[bytes, Any]] = {}
    try:
        sha = await client.script_load(COMMIT)
        for _ in range(runs):
            for way, commit in WAYS.items():
                await client.flushall()
                await client.config_resetstat()
                wall = 0.0
                for n in range(commits):
                    plan = batch(profiles, n)
                    started = time.perf_counter()
                    await commit(client, plan, sha)
                    wall += time.perf_counter() - started
                stats = await client.info("commandstats")
                usec = {name.removeprefix("cmdstat_"): s["usec"] for name, s in stats.items()}
                usec.pop("config|resetstat", None)
                results[way].append((wall / commits * 1000, sum(usec.values()) / commits / 1000))
                spent[way] = {name: u / commits / 1000 for name, u in usec.items()}
                left[way] = await snapshot(client)
        if left["watch"] != left["script"]:
            raise SystemExit("the two ways left different data in Redis")
    finally:
        await client.aclose()
    return {"results": results, "spent": spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default="200,1400")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--commits", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [redis_binary(), "--port", str(port), "--save", "", "--appendonly", "no"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            for profiles in (int(p) for p in args.profiles.split(",")):
                found = asyncio.run(measure(port, profiles, args.runs, args.commits))
                checked = len(batch(profiles, 1).checks)
                print(f"{profiles} profiles per commit ({checked} checked keys)")
                for way, runs in found["results"].items():
                    shown = ", ".join(f"{wall:.1f} / {inside:.1f}" for wall, inside in runs)
                    top = sorted(found["spent"][way].items(), key=lambda kv: -kv[1])[:3]
                    where = ", ".join(f"{name} {ms:.1f}" for name, ms in top)
                    print(f"  {way:<6} wall / inside Redis, ms per commit: {shown}  ({where})")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
