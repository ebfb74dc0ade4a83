"""bench.sizing's arithmetic: which kind a key is, what it grows with, and the command
counts a run made (the README's sizing table is derived from them)."""

from __future__ import annotations

from bench.redis_usage import Snapshot, command_deltas, key_kind, scale, snapshot
from traitflow.key_layout import KeyLayout


def test_every_profile_key_has_its_kind() -> None:
    keys = KeyLayout("run-1")
    assert key_kind(keys.state("user", "u:1"), "run-1") == "state"
    assert key_kind(keys.view("user", "u:1"), "run-1") == "view"
    assert key_kind(keys.version("user", "u:1"), "run-1") == "version"
    assert key_kind(keys.index("user", "email", "a:b@example.com"), "run-1") == "index email"
    assert key_kind(keys.expiries("user", "events/3"), "run-1") == "expiry index"
    assert key_kind(keys.messages("user", "web", 7), "run-1") == "applied messageIds"
    assert key_kind(keys.log_checkpoints("events/3"), "run-1") == "log checkpoints"
    assert key_kind("run-1:zz:whatever", "run-1") == "other (zz)"


def test_what_each_kind_grows_with() -> None:
    assert scale("state") == scale("index user_id") == scale("expiry index") == "profile"
    assert scale("applied messageIds") == "event"
    assert scale("log checkpoints") == scale("profile counts") == scale("other (zz)") == "fixed"


def _snapshot(commands: dict[str, tuple[int, int]]) -> Snapshot:
    return Snapshot(at=0.0, commands=commands, cpu_s=0.0, net_in=0, net_out=0, used_memory=0)


def test_command_deltas_count_the_run_only() -> None:
    before = _snapshot({"get": (10, 100), "info": (4, 400), "ping": (1, 1)})
    after = _snapshot({"get": (30, 160), "info": (5, 450), "ping": (1, 1), "exec": (2, 90)})
    # the benchmark's own INFO is not the worker's; unchanged commands are left out
    assert command_deltas(before, after) == [("get", 20, 60), ("exec", 2, 90)]
    assert command_deltas(before, after, own={}) == [
        ("get", 20, 60),
        ("exec", 2, 90),
        ("info", 1, 50),
    ]


def test_keys_under_a_hash_tag_and_a_spread_buckets_tag_have_their_kind() -> None:
    assert key_kind(KeyLayout("{run-1}").state("user", "u:1"), "{run-1}") == "state"
    bucket = KeyLayout("{run-1.b17}")
    assert key_kind(bucket.view("user", "u:1"), "{run-1}") == "view"
    assert key_kind(bucket.index("user", "email", "a}:b@example.com"), "{run-1}") == "index email"
    assert key_kind(bucket.outbox("events/3"), "{run-1}") == "outbox"


class Node:
    """A cluster master's `INFO everything`, as redis-py parses it."""

    def __init__(self, calls: int, cpu: float, used: int) -> None:
        self.answer = {
            "cmdstat_get": {"calls": calls, "usec": 2 * calls},
            "cmdstat_info": {"calls": 3, "usec": 30},
            "used_cpu_sys": cpu,
            "used_cpu_user": cpu,
            "total_net_input_bytes": 10,
            "total_net_output_bytes": 20,
            "used_memory": used,
        }

    def info(self, section: str) -> dict[str, object]:
        assert section == "everything"
        return self.answer


def test_a_clusters_snapshot_sums_its_masters_and_leaves_out_an_info_of_each() -> None:
    before = snapshot([Node(10, 1.0, 100), Node(5, 0.5, 50)])  # type: ignore[list-item]
    after = snapshot([Node(30, 2.0, 300), Node(6, 0.5, 70)])  # type: ignore[list-item]

    assert before.nodes == 2
    assert (before.cpu_s, before.used_memory, before.net_in) == (3.0, 150, 20)
    assert after.commands["get"] == (36, 72)
    after.commands["info"] = (8, 80)  # the first snapshot's INFO, once per node
    assert command_deltas(before, after) == [("get", 21, 42)]
