"""`traitflow worker --processes 2`: two processes of one consumer group share the
partitions, a child killed -9 is started again, SIGTERM stops them all; every profile
ends equal to the batch answer. And the supervisor alone, over children that crash at
once, ignore SIGTERM or outlive it (no broker: they are small Python commands)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Publisher, wait_until
from tests.integration.oracle import expected_view
from tests.integration.test_stitching_workers import applied, counter
from tests.integration.test_worker_kills import random_events, read_views
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon, child_pids, consecutive_free_ports
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def records(port: int) -> float:
    try:
        return counter([port], "traitflow_records")
    except Exception:  # not serving yet (starting, or just restarted)
        return 0.0


def test_two_processes_share_the_partitions_survive_a_kill_and_stop_together(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = f"tfproc-{uuid.uuid4().hex[:8]}"
    port = consecutive_free_ports(2)
    own = settings.isolated(
        run, topic_partitions=4, batch_size=50, home=tmp_path, worker_metrics_port=port
    )
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    users = [f"{run}-{n}" for n in range(40)]
    events = random_events(run, users, 1_600, seed=11)
    first, second = events[:800], events[800:]
    publish = Publisher(own, next(iter(own.sources)))
    daemon = Daemon("workers", tmp_path / "workers")
    command = [sys.executable, "-m", "traitflow", "worker", "--processes", "2"]
    supervisor = daemon.spawn([*command, "--loglevel", "info"], own.child_env(), cwd=ROOT)
    try:
        wait_until(lambda: len(child_pids(supervisor.pid)) == 2, what="two worker processes")
        publish(first)
        wait_until(partial(applied, redis_client, keys, len(first)), what="the first half")
        # one group: each process applied some of the partitions, on its own metrics port
        wait_until(lambda: records(port) > 0 and records(port + 1) > 0, what="both working")
        assert records(port) + records(port + 1) >= len(first)

        killed = min(child_pids(supervisor.pid))
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: len(child_pids(supervisor.pid) - {killed}) == 2, what="the child started again"
        )
        publish(second)
        wait_until(partial(applied, redis_client, keys, len(events)), what="every event")
        views = asyncio.run(read_views(own, users))
        for user, view in zip(users, views, strict=True):
            mine = [event for event in events if event["userId"] == user]
            assert view == expected_view(own, mine, user), user

        running = child_pids(supervisor.pid)
        os.kill(supervisor.pid, signal.SIGTERM)  # the supervisor alone: it passes it on
        assert supervisor.wait(60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in running)
        log = daemon.log_file.read_text(errors="replace")
        assert f"(pid {killed}) exited with -9; starting it again in 1 s" in log
        assert "stopping the worker processes" in log
    finally:
        daemon.stop()
        for key in redis_client.scan_iter(keys.all_keys(), count=10_000):
            redis_client.unlink(key)


SUPERVISE = """
import json, logging, sys
from traitflow.supervisor import Backoff, Supervisor
logging.basicConfig(level="INFO", format="%(message)s")
supervisor = Supervisor(
    json.loads(sys.argv[1]), 2, backoff=Backoff(first_s=0.05, max_s=0.2), stop_grace_s=1.0,
    backfills=json.loads(sys.argv[2]) if len(sys.argv) > 2 else None,
)
sys.exit(supervisor.run())
"""


@contextmanager
def supervising(
    tmp_path: Path, child: str, backfills: str | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A supervisor of two `python -c child` processes (and, given `backfills`, a
    `python -c backfills` backfill process), with a short backoff and grace; yields it
    and the file its and its children's output goes to."""
    log = tmp_path / "supervisor.log"
    extra = [] if backfills is None else [json.dumps([sys.executable, "-c", backfills])]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, json.dumps([sys.executable, "-c", child]), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        yield process, log
    finally:
        for pid in child_pids(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()


def test_children_that_crash_at_once_are_restarted_ever_more_slowly_and_stop_cleanly(
    tmp_path: Path,
) -> None:
    with supervising(tmp_path, "import sys; sys.exit(3)") as (supervisor, log):

        def delays() -> list[float]:
            text = log.read_text()
            return [
                float(d) for d in re.findall(r"exited with 3; starting it again in (\S+) s", text)
            ]

        found = wait_until(lambda: len(delays()) >= 8 and delays(), timeout=30, what="restarts")
        assert found[:3] == [0.05, 0.1, 0.2]  # one backoff for both: doubling, then capped
        assert max(found) == 0.2
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(10)  # stopped when asked, within the grace
        assert "did not stop" not in log.read_text()
        # 0, unless a child started just before the signal crashed (exit 3) on its own
        # before the signal reached it: that exit is said, and the exit is then 1
        crashed = re.search(r"exited with 3 while stopping", log.read_text())
        assert code == (1 if crashed else 0)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_and_the_exit_is_1(
    tmp_path: Path,
) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    with supervising(tmp_path, stubborn) as (supervisor, log):
        wait_until(lambda: log.read_text().count("ready") == 2, what="both children ready")
        running = child_pids(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 1
        assert all(gone(pid) for pid in running)
        assert log.read_text().count("did not stop in 1 s; killed") == 2


def kill_9_and_see_children_go(supervisor: subprocess.Popen[bytes], running: set[int]) -> None:
    """kill -9 the supervisor; its children (`running`) must exit on their own."""
    supervisor.kill()
    supervisor.wait()
    try:
        wait_until(lambda: all(map(gone, running)), timeout=10, what="orphans to exit")
    finally:
        for pid in running:
            if not gone(pid):  # a failure: orphans would otherwise sleep on
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_the_children_die_with_a_supervisor_killed_9(tmp_path: Path) -> None:
    with supervising(tmp_path, "import time; time.sleep(60)") as (supervisor, _):
        running: set[int] = wait_until(
            lambda: len(child_pids(supervisor.pid)) == 2 and child_pids(supervisor.pid),
            what="two children",
        )
        kill_9_and_see_children_go(supervisor, running)


def test_the_backfill_process_is_restarted_and_dies_with_a_supervisor_killed_9(
    tmp_path: Path,
) -> None:
    """TRAITFLOW_BACKFILL_PROCESS: the backfill process is one more child, restarted
    like the workers and gone with the supervisor (the same PR_SET_PDEATHSIG path)."""
    sleep = "import time; time.sleep(60)"
    with supervising(tmp_path, sleep, backfills=sleep) as (supervisor, log):
        wait_until(lambda: len(child_pids(supervisor.pid)) == 3, what="two workers, backfills")
        # the supervisor logs a child after starting it: the line may follow the pid
        started = wait_until(
            lambda: re.search(r"backfill process started \(pid (\d+)\)", log.read_text()),
            what="the supervisor's line for the backfill process",
        )
        killed = int(started[1])
        os.kill(killed, signal.SIGKILL)
        exited = f"backfill process (pid {killed}) exited with -9; starting it again in"
        wait_until(
            lambda: exited in log.read_text() and len(child_pids(supervisor.pid) - {killed}) == 3,
            what="the backfill process started again",
        )
        kill_9_and_see_children_go(supervisor, child_pids(supervisor.pid))
