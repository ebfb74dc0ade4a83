"""What a `traitflow` command knows of the process's environment: a copy the CLI's
callback takes once, as the command starts, and the settings made from it.

Commands take their settings from here (`settings_of(ctx)`), never from `os.environ`:
the environment is read once, at the edge, and what the command then builds (stores,
apps, child processes) is given settings explicitly. The settings are parsed on first
use, not in the callback, so that `--help` and a command that needs none still work
with a variable that does not parse (as they did when each command read its own).

It also holds what every command says when it fails (`fail`, `redis_failure`) and
how it runs its work against a store (`run_closing`), so that a failure reads the same
whichever command met it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import typer

from traitflow.config import Settings
from traitflow.redis_client import access_problem

T = TypeVar("T")


class Closing(Protocol):
    """What a command opens for its work: a store or client, closed once it is done."""

    async def close(self) -> None: ...


C = TypeVar("C", bound=Closing)


class Environment:
    """The environment a command was started with, and the settings it makes."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ: dict[str, str] = dict(environ)
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_environ(self.environ)
        return self._settings


def environment(ctx: typer.Context) -> Environment:
    """The command's `Environment`, kept on the root context. A sub-app invoked on its
    own (without the `traitflow` callback) is an entry point itself: it takes it here."""
    root = ctx.find_root()
    if not isinstance(root.obj, Environment):
        root.obj = Environment(os.environ)
    return root.obj


def settings_of(ctx: typer.Context) -> Settings:
    return environment(ctx).settings


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr and return the exit to raise (`raise fail(...)
    from None`): a refusal is a message and an exit code, never a traceback. Code 2:
    the command line is wrong; 1: something it needed failed."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def redis_failure(settings: Settings, exc: BaseException, hint: str = "") -> typer.Exit:
    """`fail` for a Redis that failed a command: what to set when Redis refused the
    credentials, TLS or ACL (`access_problem`), else its host and port, the error's type
    and text, and `hint`. Never the URL: it may hold a password."""
    if problem := access_problem(exc, settings):
        return fail(problem, 1)
    host, port = settings.redis_host_port
    return fail(f"Redis at {host}:{port}: {type(exc).__name__}: {exc}{hint}", 1)


def run_closing(opened: Callable[[], C], action: Callable[[C], Awaitable[T]]) -> T:
    """Run `action` on what `opened` makes, in a loop of its own, and close it after,
    whatever `action` raised (which the caller maps to its messages)."""

    async def run() -> T:
        resource = opened()
        try:
            return await action(resource)
        finally:
            await resource.close()

    return asyncio.run(run())
