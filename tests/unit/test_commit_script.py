"""The commit script's arguments, worked out without a server (the script itself runs
against a real Redis in tests/integration/test_store.py)."""

from __future__ import annotations

from collections.abc import Sequence

from traitflow.commit_script import (
    MAX_ITEMS,
    Arg,
    CommandList,
    found_values,
    script_arguments,
)


def commands_of(args: Sequence[Arg]) -> list[Sequence[Arg]]:
    """The commands in a script's ARGV tail, as the script walks it."""
    commands: list[Sequence[Arg]] = []
    at = 0
    while at < len(args):
        size = args[at]
        assert isinstance(size, int)
        commands.append(args[at + 1 : at + 1 + size])
        at += size + 1
    return commands


def test_each_command_is_its_argument_count_then_its_arguments() -> None:
    commands = CommandList()
    commands.mset({"tf:v:u-1": b"{}", "tf:n:u-1": "3"})
    commands.zadd("tf:x:events/0", {"u-1": 17})
    commands.xadd("tf:o:events/0", {b"topic": b"changes", b"key": b"u-1"})
    commands.hincrby("tf:a:user", "buyers", -1)
    assert commands_of(commands.args) == [
        ["MSET", "tf:v:u-1", b"{}", "tf:n:u-1", "3"],
        ["ZADD", "tf:x:events/0", 17, "u-1"],
        ["XADD", "tf:o:events/0", "*", b"topic", b"changes", b"key", b"u-1"],
        ["HINCRBY", "tf:a:user", "buyers", -1],
    ]
    assert commands.count == 4


def test_a_large_command_is_split_so_that_lua_can_spread_it() -> None:
    commands = CommandList()
    mapping = {f"k{n}": b"v" for n in range(2 * MAX_ITEMS + 1)}
    commands.mset(mapping)
    commands.sadd("tf:d:web:1", *(f"m{n}" for n in range(MAX_ITEMS + 1)))
    split = commands_of(commands.args)
    assert [c[0] for c in split] == ["MSET", "MSET", "MSET", "SADD", "SADD"]
    assert max(len(c) for c in split) <= 2 * MAX_ITEMS + 1
    written = {key: value for c in split[:3] for key, value in zip(c[1::2], c[2::2], strict=True)}
    assert written == mapping
    assert sum(len(c) - 2 for c in split[3:]) == MAX_ITEMS + 1


def test_every_key_written_is_declared_after_the_checked_ones() -> None:
    commands = CommandList()
    commands.mset({"tf:v:u-1": b"{}"})
    commands.delete("tf:v:u-2", "tf:v:u-1")
    commands.pexpire("tf:d:web:1", 60_000)
    keys, args = script_arguments({"tf:n:u-1": b"2", "tf:i:email:a": b""}, commands)
    assert keys == ["tf:n:u-1", "tf:i:email:a", "tf:v:u-1", "tf:v:u-2", "tf:d:web:1"]
    assert args[:3] == [2, b"2", b""]
    assert commands_of(args[3:])[0] == ["MSET", "tf:v:u-1", b"{}"]


def test_the_reply_says_written_or_what_the_checks_found() -> None:
    assert found_values(0) is None
    assert found_values([b"u-9", None, b"2"]) == [b"u-9", None, b"2"]
