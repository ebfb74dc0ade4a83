"""The worker supervisor's policies: one process per core by default, a metrics port
per child, and a restart backoff that grows while children die young."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from traitflow.config import Settings
from traitflow.supervisor import (
    Backoff,
    Child,
    Supervisor,
    child_env,
    default_processes,
    resolve_processes,
)


def test_the_default_is_one_process_per_core_this_process_may_use() -> None:
    assert default_processes() == len(os.sched_getaffinity(0))


def test_the_option_wins_then_the_setting_then_one_per_core() -> None:
    assert resolve_processes(3, 5, cores=8) == 3
    assert resolve_processes(None, 5, cores=8) == 5
    assert resolve_processes(None, 0, cores=8) == 8  # 0 or unset: one per core
    assert resolve_processes(1, 0, cores=8) == 1  # --processes 1: no supervisor
    assert resolve_processes(None, 0) == default_processes()


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAITFLOW_WORKER_PROCESSES", raising=False)
    assert Settings.from_environ(os.environ).worker_processes == 0  # one per core
    monkeypatch.setenv("TRAITFLOW_WORKER_PROCESSES", "3")
    assert Settings.from_environ(os.environ).worker_processes == 3
    monkeypatch.setenv("TRAITFLOW_WORKER_PROCESSES", "-1")
    with pytest.raises(ValidationError, match="worker_processes"):
        Settings.from_environ(os.environ)


def test_a_test_or_benchmark_child_gets_the_setting_pinned() -> None:
    """`isolated` keeps it and `as_env` writes it, so a worker started with a test's
    settings runs the number of processes the test chose."""
    pinned = Settings(worker_processes=1).isolated("tfpin")
    assert pinned.worker_processes == 1
    assert pinned.as_env()["TRAITFLOW_WORKER_PROCESSES"] == "1"


def test_each_child_runs_one_process_and_serves_metrics_on_its_own_port() -> None:
    base = {"TRAITFLOW_RULES_PATH": "rules.yaml", "TRAITFLOW_WORKER_PROCESSES": "0"}
    assert child_env(base, 2, 9100) == {
        "TRAITFLOW_RULES_PATH": "rules.yaml",
        "TRAITFLOW_WORKER_PROCESSES": "1",
        "TRAITFLOW_WORKER_METRICS_PORT": "9102",
    }
    assert "TRAITFLOW_WORKER_METRICS_PORT" not in child_env(base, 2, None)


def test_the_backoff_doubles_while_children_die_young_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first_s=1, max_s=30, stable_s=30)
    assert [backoff.after_exit(lived_s=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after_exit(lived_s=3600) == 1  # it ran for an hour: a fresh failure
    assert backoff.after_exit(lived_s=1) == 2


def test_children_that_all_die_at_once_come_back_one_after_another() -> None:
    backoff = Backoff()  # the defaults: 1 s doubling to 30 s
    first_round = [backoff.after_exit(lived_s=0.5) for _ in range(4)]
    assert first_round == [1, 2, 4, 8]
    assert max(backoff.after_exit(lived_s=0.5) for _ in range(4)) == 30


@dataclass
class ExitedProcess:
    pid: int
    returncode: int = -9

    def poll(self) -> int:
        return self.returncode


def test_an_exited_child_is_started_again_once_its_backoff_is_over() -> None:
    started: list[int] = []

    class Recording(Supervisor):
        def _start(self, child: Child) -> None:
            started.append(child.index)
            child.started, child.restart_at = 100.0, None

    supervisor = Recording(["worker"], 2)
    supervisor.children = [Child(0, started=90.0), Child(1)]
    supervisor.children[0].process = ExitedProcess(pid=41)  # type: ignore[assignment]

    supervisor.watch(now=95.0)  # it lived 5 s: the first delay, 1 s
    assert started == []
    assert supervisor.children[0].restart_at == 96.0
    supervisor.watch(now=95.5)
    assert started == []
    supervisor.watch(now=96.0)
    assert started == [0]  # the other child, never exited, is left alone
