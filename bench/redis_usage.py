"""Redis usage, measured from the server's own figures: what `bench.sizing` reports.

A key's kind comes from `traitflow.store`'s layout; memory is `MEMORY USAGE` per key
and `INFO memory`'s `used_memory`; the work a run made is `INFO commandstats`, `INFO
cpu` and `INFO stats`' network bytes after minus before. All of them are whole-server
figures, so the server must serve the measured run alone. On a Redis Cluster each is
summed over the masters (`nodes`: a client of each), and keys are read on the node
that holds them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from bench.memory import memory_usage
from traitflow.key_layout import KeyLayout

#: a key's kind, by the part after the prefix (`traitflow.store`'s layout)
KINDS = {
    "s": "state",
    "v": "view",
    "n": "version",
    "c": "record",
    "i": "index",
    "x": "expiry index",
    "d": "applied messageIds",
    "l": "log checkpoints",
    "e": "log epoch",
    "o": "outbox",
    "a": "audience sizes",
    "ax": "expiring audience members",
    "pc": "profile counts",
    "pcx": "expiring counted profiles",
    "t": "tombstones",
    "rs": "rules-version starts",
    "ca": "rule catalog",
    "sync": "durability marker",
}
#: kinds of which each profile owns a key (an index: one per identity): sampled
PER_PROFILE = {"state", "view", "version", "record", "index"}
#: kinds that grow with the profiles but are a few keys, measured whole
WITH_PROFILES = {"expiry index"}
#: kinds that follow the events applied within the dedupe window, not the profiles
PER_EVENT = {"applied messageIds"}
SCALES = ("profile", "event", "fixed")
#: what the worker's /metrics says about the run
COUNTERS = (
    "traitflow_records_total",
    "traitflow_dead_letters_total",
    "traitflow_profiles_written_total",
    "traitflow_batch_seconds_count",
    "traitflow_profile_merges_total",
    "traitflow_commit_conflicts_total",
)


def key_kind(key: str, prefix: str) -> str:
    """The kind of a key under `prefix`, or under a hash tag (`{tf}`, or a bucket's of
    the spread layout, `{tf.b17}`); an index key's names its identity type."""
    if key.startswith("{") and "}:" in key:
        key = key.partition("}:")[2]
    else:
        key = key.removeprefix(f"{prefix}:")
    parts = key.split(":")
    kind = KINDS.get(parts[0], f"other ({parts[0]})")
    if kind == "index" and len(parts) >= 4:
        return f"index {parts[2]}"
    return kind


def scale(kind: str) -> str:
    """What a kind's bytes grow with: "profile", "event", or nothing ("fixed")."""
    if kind.split(" ")[0] in PER_PROFILE or kind in WITH_PROFILES:
        return "profile"
    return "event" if kind in PER_EVENT else "fixed"


@dataclass(frozen=True)
class Snapshot:
    """What a run is measured with: one `INFO everything`."""

    at: float
    #: command (`get`, `client|setname`, ...) -> (calls, microseconds)
    commands: dict[str, tuple[int, int]]
    cpu_s: float
    net_in: int
    net_out: int
    used_memory: int
    #: the servers it sums (a cluster's masters)
    nodes: int = 1


def snapshot(nodes: redis.Redis | Sequence[redis.Redis]) -> Snapshot:
    """One `INFO everything` of each node, summed."""
    clients = [nodes] if isinstance(nodes, redis.Redis) else list(nodes)
    commands: dict[str, tuple[int, int]] = {}
    cpu_s, net_in, net_out, used = 0.0, 0, 0, 0
    for client in clients:
        info = client.info("everything")
        for name, value in info.items():
            if name.startswith("cmdstat_") and isinstance(value, dict):
                calls, usec = commands.get(name.removeprefix("cmdstat_"), (0, 0))
                commands[name.removeprefix("cmdstat_")] = (
                    calls + int(value["calls"]),
                    usec + int(value["usec"]),
                )
        cpu_s += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        net_in += int(info["total_net_input_bytes"])
        net_out += int(info["total_net_output_bytes"])
        used += int(info["used_memory"])
    return Snapshot(time.monotonic(), commands, cpu_s, net_in, net_out, used, len(clients))


def command_deltas(
    before: Snapshot, after: Snapshot, own: Mapping[str, int] | None = None
) -> list[tuple[str, int, int]]:
    """(command, calls, microseconds) made between the snapshots, the benchmark's own
    calls taken out (by default the first one's INFO of each node, which Redis counts
    once it has answered), most calls first."""
    own = {"info": before.nodes} if own is None else own
    rows = []
    for command, (calls, usec) in after.commands.items():
        was_calls, was_usec = before.commands.get(command, (0, 0))
        made = calls - was_calls - own.get(command, 0)
        if made > 0:
            rows.append((command, made, usec - was_usec))
    return sorted(rows, key=lambda row: (-row[1], row[0]))


@dataclass(frozen=True)
class Kind:
    name: str
    keys: int
    #: bytes of all of them: measured whole, or a sample's mean times `keys`
    total: float
    #: set members or sorted-set entries in all (0 for strings and hashes)
    members: int
    how: str


def measure_keys(
    nodes: redis.Redis | Sequence[redis.Redis],
    prefix: str,
    sample: int,
    patterns: Sequence[str] = (),
) -> list[Kind]:
    """Every key under `prefix` (and `patterns`: the spread layout's bucket tags) on
    each node, by kind: the keys a profile owns on a sample, the others whole."""
    clients = [nodes] if isinstance(nodes, redis.Redis) else list(nodes)
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for n, client in enumerate(clients):
        for pattern in [KeyLayout(prefix).all_keys(), *patterns]:
            for key in client.scan_iter(match=pattern, count=10_000):
                name = key.decode()
                by_kind.setdefault(key_kind(name, prefix), []).append((n, name))
    rng = random.Random(1)
    kinds = []
    for name, keys in sorted(by_kind.items()):
        if name.split(" ")[0] in PER_PROFILE and len(keys) > sample:
            picked = rng.sample(keys, sample)
            mean = sum(_usage(clients, picked)) / sample
            kinds.append(Kind(name, len(keys), mean * len(keys), 0, f"mean of {sample:,} keys"))
            continue
        total = sum(_usage(clients, keys))
        kinds.append(Kind(name, len(keys), total, _members(clients, keys), "whole"))
    return kinds


def _on_nodes(keys: Sequence[tuple[int, str]]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for n, key in keys:
        grouped.setdefault(n, []).append(key)
    return grouped


def _usage(clients: Sequence[redis.Redis], keys: Sequence[tuple[int, str]]) -> list[int]:
    return [
        size for n, names in _on_nodes(keys).items() for size in memory_usage(clients[n], names)
    ]


def _members(clients: Sequence[redis.Redis], keys: Sequence[tuple[int, str]]) -> int:
    """Set members and sorted-set entries of `keys`."""
    members = 0
    for n, names in _on_nodes(keys).items():
        pipe = clients[n].pipeline(transaction=False)
        for key in names:
            pipe.type(key)
        types = [kind.decode() for kind in pipe.execute()]
        for key, kind in zip(names, types, strict=True):
            if kind == "set":
                pipe.scard(key)
            elif kind == "zset":
                pipe.zcard(key)
        members += sum(int(count) for count in pipe.execute())
    return members


@dataclass
class Run:
    events: int
    before: Snapshot
    done: Snapshot
    idle: Snapshot
    counted: dict[str, float]
    #: seconds from the worker's start to the first record it took (paced: to the
    #: first event sent), and to every event applied
    wall: tuple[float, float]
    #: the worker's CPU over the run (a backlog's: with its start-up)
    worker_cpu_s: float
    #: used_memory and used_memory_rss once the worker stopped
    memory_after: tuple[int, int]


def print_memory(run: Run, kinds: list[Kind], profiles: int, buckets: int) -> None:
    """The memory table, and the bytes per profile: used_memory's delta less what
    follows the events and what is fixed, over the profiles."""
    used, rss = run.memory_after
    delta = used - run.before.used_memory
    grows = {what: sum(k.total for k in kinds if scale(k.name) == what) for what in SCALES}
    print(f"used_memory        {run.before.used_memory:,} -> {used:,} bytes; used_memory_rss "
          f"{rss:,} ({rss / used:.2f} of used_memory)")  # fmt: skip
    print(f"{'key kind':<26}{'keys':>9}{'entries':>10}{'bytes/key':>11}{'bytes/profile':>15}  how")
    for k in kinds:
        if scale(k.name) == "event":
            continue
        shown = f"{k.total / profiles:,.0f}" if scale(k.name) == "profile" else "-"
        print(f"{k.name:<26}{k.keys:>9,}{k.members or '':>10}{k.total / k.keys:>11,.0f}"
              f"{shown:>15}  MEMORY USAGE, {k.how}")  # fmt: skip
    print(f"{'key table buckets':<56}{buckets / profiles:>15,.0f}  MEMORY STATS")
    print(f"{'sum of the per-profile rows':<56}{(grows['profile'] + buckets) / profiles:>15,.0f}")
    result = (delta - grows["event"] - grows["fixed"]) / profiles
    print(f"{'used_memory delta per profile':<56}{result:>15,.0f}  without the messageId "
          f"sets ({grows['event']:,.0f} B) and fixed keys ({grows['fixed']:,.0f} B)")  # fmt: skip
    for k in kinds:
        if scale(k.name) == "event":
            print(f"{k.name:<26}{k.keys:>9,} sets, {k.members:,} ids: "
                  f"{k.total / max(1, k.members):,.0f} bytes per applied event")  # fmt: skip


def print_commands(run: Run, profiles: int) -> None:
    batches = run.counted["traitflow_batch_seconds_count"]
    writes = run.counted["traitflow_profiles_written_total"]
    rows = command_deltas(run.before, run.done)
    calls = sum(row[1] for row in rows)
    usec = sum(row[2] for row in rows)
    print(f"\nRedis commands: {run.events:,} events, {batches:,.0f} batches "
          f"({run.events / batches:,.0f} events each), {writes:,.0f} profile writes "
          f"({run.events / writes:.2f} events each), {profiles:,} profiles")  # fmt: skip
    print(f"{'command':<22}{'calls':>10}{'/event':>9}{'/write':>9}{'/batch':>9}{'us/call':>9}"
          f"{'of time':>9}")  # fmt: skip
    for command, made, spent in [*rows, ("all", calls, usec)]:
        share = spent / max(1, usec)
        print(f"{command:<22}{made:>10,}{made / run.events:>9.3f}{made / writes:>9.3f}"
              f"{made / batches:>9.1f}{spent / made:>9.2f}{share:>9.0%}")  # fmt: skip
    cpu = run.done.cpu_s - run.before.cpu_s
    print(f"Redis CPU          {1e6 * cpu / run.events:.1f} us per event (INFO cpu, the server "
          f"process, I/O included); inside commands {usec / run.events:.1f} us "
          f"(commandstats: wall time, so a descheduled Redis counts too)")  # fmt: skip
    net_in, net_out = run.done.net_in - run.before.net_in, run.done.net_out - run.before.net_out
    print(f"Redis network      {net_in / run.events:,.0f} bytes in, "
          f"{net_out / run.events:,.0f} bytes out per event")  # fmt: skip
    idle_s = run.idle.at - run.done.at
    idle = sum(row[1] for row in command_deltas(run.done, run.idle))
    span = run.wall[1] - run.wall[0]
    print(f"idle worker        {idle / idle_s:,.1f} commands/s (timers; over the run: "
          f"{idle / idle_s * (run.done.at - run.before.at) / run.events:.4f} per event of "
          f"the above)")  # fmt: skip
    print(f"worker             {run.events / max(span, 1e-9):,.0f} events/s ({span:.1f} s from "
          f"the first event to the last), {1e6 * run.worker_cpu_s / run.events:.0f} us of "
          f"CPU per event (a backlog's with the start-up; throughput: bench.pipeline)")  # fmt: skip
