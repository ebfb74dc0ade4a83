"""bench.sizing's arithmetic: which kind a key is, what it grows with, and the command
counts a run made (the README's sizing table is derived from them)."""

from __future__ import annotations

from bench.redis_usage import Snapshot, command_deltas, key_kind, scale
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
