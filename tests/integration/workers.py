"""Real `traitflow worker` processes for integration tests, and what their logs say."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from traitflow.config import Settings
from traitflow.services import Daemon

ROOT = Path(__file__).resolve().parents[2]


def start_worker(settings: Settings, name: str) -> Daemon:
    """A worker with exactly `settings`, logging at INFO to `settings.home / name`."""
    daemon = Daemon(name, settings.home / name)
    daemon.spawn(
        [sys.executable, "-m", "traitflow", "worker", "--loglevel", "info"],
        settings.child_env(),
        cwd=ROOT,
    )
    return daemon


def worker_log(daemon: Daemon) -> str:
    path: Path = daemon.log_file
    return path.read_text(errors="replace") if path.exists() else ""


def skipped_records(daemon: Daemon) -> int:
    """Records the worker skipped because their offsets were applied before."""
    return sum(int(n) for n in re.findall(r"(\d+) records were applied before", worker_log(daemon)))


def alive(daemon: Daemon) -> bool:
    """True, or fail the test with the end of the worker's log if it exited."""
    if daemon.pid() is None:
        pytest.fail(f"{daemon.name} exited early:\n{worker_log(daemon)[-5000:]}")
    return True
