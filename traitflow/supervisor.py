"""`traitflow worker --processes N`: N worker processes of one consumer group, one command.

Why processes: a worker is CPU-bound in Python on one core (bench/README.md), so a host
with more cores runs more workers. They share the input partitions as any members of
one consumer group do (the group id is the app id), so the supervisor only starts,
watches and stops them; Kafka's group protocol does the rest.

What an operator can rely on:
- with `TRAITFLOW_BACKFILL_PROCESS` on, one more child runs `traitflow backfills`
  (`streams.backfill_process`): backfills in a process of their own, holding no
  partitions; it is watched, restarted and stopped like the workers;
- `--processes 1` with `TRAITFLOW_BACKFILL_PROCESS` off runs no supervisor: the worker
  is the command's own process;
- the rule file and Redis are checked once, before any child starts, so the usual
  misconfigurations exit at once (2: rules, 1: Redis) instead of restarting in a loop;
- each worker child is `traitflow worker --processes 1 --supervised` (a hidden option:
  it runs the worker, never a supervisor) with this process's environment; with
  `TRAITFLOW_WORKER_METRICS_PORT` set to P, child i serves its metrics on P + i;
- a child that exits when it was not asked to is started again, after a backoff that
  doubles (1 s, 2 s, ... 30 s) while children keep dying within `STABLE_S` of their
  start, and is back to 1 s once one has run that long: a child that crashes in a loop
  (a broker or Redis that refuses it, a bug) does not spin a core, and every exit is a
  log line with its exit code and the delay (one backoff for all children: when every
  child dies at once they come back one after another, then every 30 s);
- SIGTERM or SIGINT is passed on to every child; the supervisor waits up to
  `STOP_GRACE_S` for them (a child finishes its batches in flight and commits), kills
  what is left, and exits 0 if every child stopped cleanly, 1 otherwise (one had to be
  killed, or had exited with an error);
- the children die with the supervisor (SIGTERM on Linux, even if it is killed -9):
  starting the command again never leaves a second set of workers in the group.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import FrameType

log = logging.getLogger(__name__)

#: a child that ran this long before it exited was healthy: restart without waiting long
STABLE_S = 30.0
#: how long stopping children may take before they are killed
STOP_GRACE_S = 30.0
#: how often the supervisor looks at its children
POLL_S = 0.2


def default_processes() -> int:
    """One per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def resolve_processes(option: int | None, setting: int, cores: int | None = None) -> int:
    """How many processes: `--processes`, else TRAITFLOW_WORKER_PROCESSES, else (0 or
    unset) one per core."""
    return option or setting or cores or default_processes()


def _libc_prctl() -> Callable[..., int] | None:
    """Linux's prctl, looked up before a fork (the child must not load libraries)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(parent: int, prctl: Callable[..., int] | None) -> None:  # pragma: no cover
    """In a child before exec: SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), and
    gone at once if it already has."""
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def child_env(base: Mapping[str, str], index: int, metrics_port: int | None) -> dict[str, str]:
    """Child `index`'s environment: one process, and its own metrics port if any."""
    env = dict(base) | {"TRAITFLOW_WORKER_PROCESSES": "1"}
    if metrics_port is not None:
        env["TRAITFLOW_WORKER_METRICS_PORT"] = str(metrics_port + index)
    return env


@dataclass
class Backoff:
    """The delay before starting a child again: doubling while children die young."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = STABLE_S
    failures: int = 0

    def after_exit(self, lived_s: float) -> float:
        if lived_s >= self.stable_s:
            self.failures = 0
        delay = min(self.max_s, self.first_s * 2.0**self.failures)
        self.failures += 1
        return delay


@dataclass
class Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: when to start it again after an exit (monotonic); None: running or not due
    restart_at: float | None = None
    #: what it runs instead of the supervisor's worker command (the backfill process)
    command: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "backfill process" if self.command else f"worker process {self.index}"


def plan(processes: int, backfills: Sequence[str] | None) -> list[Child]:
    """The children: `processes` workers, and the backfill process if there is one."""
    children = [Child(i) for i in range(processes)]
    if backfills is not None:
        children.append(Child(processes, command=tuple(backfills)))
    return children


@dataclass
class Supervisor:
    command: Sequence[str]
    processes: int
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    metrics_port: int | None = None
    #: the backfill process's command (TRAITFLOW_BACKFILL_PROCESS); None: none runs
    backfills: Sequence[str] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    stop_grace_s: float = STOP_GRACE_S
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        """Start the children and watch them until asked to stop; the exit code."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.children = plan(self.processes, self.backfills)
            for child in self.children:
                self._start(child)
            while not self.stopping:
                self.watch(time.monotonic())
                time.sleep(POLL_S)
            log.info("stopping the worker processes")
            return self._stop_children()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def watch(self, now: float) -> None:
        """Notice children that exited, and start those whose backoff is over."""
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None:
                delay = self.backoff.after_exit(now - child.started)
                log.error(
                    "%s (pid %d) exited with %s; starting it again in %g s",
                    child.name,
                    process.pid,
                    process.returncode,
                    delay,
                )
                child.process, child.restart_at = None, now + delay
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    def _start(self, child: Child) -> None:
        env = child_env(self.env, child.index, self.metrics_port)
        if child.command:  # the backfill process serves no metrics
            env.pop("TRAITFLOW_WORKER_METRICS_PORT", None)
        preexec = partial(_die_with_parent, os.getpid(), _libc_prctl())
        command = list(child.command or self.command)
        child.process = subprocess.Popen(command, env=env, preexec_fn=preexec)
        child.started, child.restart_at = time.monotonic(), None
        log.info("%s started (pid %d)", child.name, child.process.pid)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _stop_children(self) -> int:
        running = [c.process for c in self.children if c.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        clean = True
        for process in running:
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker pid %d did not stop in %g s; killed", process.pid, self.stop_grace_s
                )
                process.kill()
                process.wait()
                clean = False
                continue
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("worker pid %d exited with %s while stopping", process.pid, code)
                clean = False
        return 0 if clean else 1
