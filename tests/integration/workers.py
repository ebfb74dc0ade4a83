"""Real `traitflow worker` and `traitflow api` processes for integration tests, and
what their logs say."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from traitflow.config import Settings
from traitflow.services import Daemon, Service, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]


def start_worker(settings: Settings, name: str) -> Daemon:
    """A worker with exactly `settings`, logging at INFO to `settings.home / name`."""
    daemon = Daemon(name, settings.home / name)
    daemon.spawn(
        [sys.executable, "-m", "traitflow", "worker", "--processes", "1", "--loglevel", "info"],
        settings.child_env(),
        cwd=ROOT,
    )
    return daemon


@contextlib.contextmanager
def running_api(settings: Settings, name: str, timeout: float = 30) -> Iterator[str]:
    """A real `traitflow api` process with exactly `settings`; yields its base URL."""
    port = free_port()
    daemon = Daemon(name, settings.home / name)
    process = daemon.spawn(
        [sys.executable, "-m", "traitflow", "api", "--port", str(port)],
        settings.child_env(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", port):
            if process.poll() is not None:
                pytest.fail(f"api exited with {process.returncode}: {daemon.log_file.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the API server did not listen within {timeout} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        daemon.stop()


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


@contextlib.contextmanager
def own_service(service: Service) -> Iterator[Service]:
    """Run `service`, a broker or redis-server of the test's own (never the session's:
    tests kill, pause and restart them), and stop it after, paused or not."""
    service.start()
    try:
        yield service
    finally:
        pid = service.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGCONT)  # a paused one would not stop
        service.stop()
