"""Real `traitflow worker` and `traitflow api` processes for integration tests, and
what their logs say."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon, Service, free_port, port_open
from traitflow.topics import ensure_topics

if TYPE_CHECKING:
    from tests.integration.conftest import Publisher

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


@dataclass
class OwnWorker:
    """What a test reaches its own worker by (see `worker_with_rules`)."""

    settings: Settings
    keys: KeyLayout
    publish: Publisher
    worker: Daemon  # a test that restarts the worker sets the new one here: it is stopped


@contextlib.contextmanager
def worker_with_rules(
    settings: Settings, tmp_path: Path, rules: str, name: str, **changes: Any
) -> Iterator[OwnWorker]:
    """A real worker with `rules` (the text of a rules file), yielded once it has written
    a profile and stopped after. Its settings are `settings.isolated(name, **changes)`
    with the rules file and home in `tmp_path`: topics, consumer group and keys of its own.

    Why: each test whose rules are not the session worker's needs a worker of its own,
    and each repeated this setup. The probe profile's write shows that the worker has
    joined its group and consumes, so a test's own timeouts do not include the seconds
    of a group join."""
    from tests.integration.conftest import Publisher, wait_until  # conftest imports us

    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(rules)
    own = settings.isolated(name, rules_path=rules_path, home=tmp_path, **changes)
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    started = OwnWorker(
        own, keys, Publisher(own, next(iter(own.sources))), start_worker(own, "worker")
    )
    try:
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        started.publish([{"type": "identify", "userId": probe, "traits": {"probe": True}}])
        client = redis.Redis.from_url(own.redis_url)
        try:
            wait_until(
                lambda: alive(started.worker) and client.exists(keys.view("user", probe)),
                timeout=60,
                what="the worker to process its first event",
            )
        finally:
            client.close()
        yield started
    finally:
        started.worker.stop()


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
        if process.poll() is None:
            # another API of the same name in the same home (a test's own, in the
            # session's home) took the pid file meanwhile, and stopping that one
            # removed it: stop this one by its own pid, or it outlives the tests
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


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
