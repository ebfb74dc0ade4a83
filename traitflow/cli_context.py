"""What a `traitflow` command knows of the process's environment: a copy the CLI's
callback takes once, as the command starts, and the settings made from it.

Commands take their settings from here (`settings_of(ctx)`), never from `os.environ`:
the environment is read once, at the edge, and what the command then builds (stores,
apps, child processes) is given settings explicitly. The settings are parsed on first
use, not in the callback, so that `--help` and a command that needs none still work
with a variable that does not parse (as they did when each command read its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import typer

from traitflow.config import Settings


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
