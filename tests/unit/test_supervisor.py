"""The worker supervisor's policies: one process per core by default, a metrics port
per child, a restart backoff that grows while children die young, and the backfill
process beside the workers (TRAITFLOW_BACKFILL_PROCESS)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from traitflow import cli
from traitflow.config import Settings
from traitflow.supervisor import (
    Backoff,
    Child,
    Supervisor,
    child_env,
    default_processes,
    plan,
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


def test_the_backfill_process_setting_is_on_by_default_and_read_and_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRAITFLOW_BACKFILL_PROCESS", raising=False)
    assert Settings.from_environ(os.environ).backfill_process is True
    monkeypatch.setenv("TRAITFLOW_BACKFILL_PROCESS", "false")
    off = Settings.from_environ(os.environ)
    assert off.backfill_process is False
    assert off.isolated("tfpin").as_env()["TRAITFLOW_BACKFILL_PROCESS"] == "false"


def test_the_children_are_the_workers_and_the_backfill_process_after_them() -> None:
    assert [(c.index, c.command, c.name) for c in plan(2, ["tf", "backfills"])] == [
        (0, (), "worker process 0"),
        (1, (), "worker process 1"),
        (2, ("tf", "backfills"), "backfill process"),
    ]
    assert [c.name for c in plan(1, None)] == ["worker process 0"]  # the setting off


def test_the_backfill_process_runs_its_own_command_with_no_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned: list[tuple[list[str], dict[str, str]]] = []

    class Spawned:
        pid = 7

        def __init__(self, command: list[str], env: dict[str, str], **kwargs: object) -> None:
            spawned.append((command, env))

    monkeypatch.setattr(subprocess, "Popen", Spawned)
    env = {"TRAITFLOW_WORKER_METRICS_PORT": "9100"}
    supervisor = Supervisor(["worker"], 1, env=env, metrics_port=9100, backfills=["backfills"])
    for child in plan(1, supervisor.backfills):
        supervisor._start(child)
    (worker, worker_env), (backfills, backfills_env) = spawned
    assert (worker, worker_env["TRAITFLOW_WORKER_METRICS_PORT"]) == (["worker"], "9100")
    assert backfills == ["backfills"]
    assert "TRAITFLOW_WORKER_METRICS_PORT" not in backfills_env


@pytest.mark.parametrize(
    ("processes", "backfill_process", "supervises", "backfills"),
    [
        ("1", "false", False, False),  # the worker is the command's own process
        ("1", "true", True, True),  # one worker, and the backfill process beside it
        ("2", "false", True, False),
        ("2", "true", True, True),
    ],
)
def test_the_worker_command_supervises_when_it_runs_the_backfill_process(
    monkeypatch: pytest.MonkeyPatch,
    processes: str,
    backfill_process: str,
    supervises: bool,
    backfills: bool,
) -> None:
    ran: list[Supervisor] = []

    def run(self: Supervisor) -> int:
        ran.append(self)
        return 0

    def worker_itself(settings: Settings) -> None:
        raise typer.Exit(7)

    for check in ("_redis_or_exit", "_kafka_or_exit", "_rules_or_exit"):
        monkeypatch.setattr(cli, check, lambda *args: None)
    monkeypatch.setattr(cli, "_current_rules_or_exit", worker_itself)
    monkeypatch.setattr(Supervisor, "run", run)
    env = {"TRAITFLOW_WORKER_PROCESSES": processes, "TRAITFLOW_BACKFILL_PROCESS": backfill_process}
    result = CliRunner().invoke(cli.app, ["worker"], env=env)
    assert result.exit_code == (0 if supervises else 7), result.output
    if supervises:
        (supervisor,) = ran
        assert supervisor.processes == int(processes)
        assert "--supervised" in supervisor.command  # a child never supervises
        assert (supervisor.backfills is not None) == backfills
        assert supervisor.backfills is None or "backfills" in supervisor.backfills
    supervised = CliRunner().invoke(
        cli.app, ["worker", "--processes", "1", "--supervised"], env=env
    )
    assert supervised.exit_code == 7  # the child runs the worker itself


def test_the_backfill_process_runs_at_a_lower_cpu_priority_than_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams import backfill_process

    niced: list[int] = []
    ran: list[int] = []

    async def run_backfills(*args: object) -> None:
        ran.append(len(args))

    monkeypatch.setattr(os, "nice", niced.append)
    monkeypatch.setattr(backfill_process, "run_backfills", run_backfills)
    backfill_process.main(Settings(), None, None, 0)  # type: ignore[arg-type]
    assert niced == [backfill_process.NICE]
    assert ran == [5]
