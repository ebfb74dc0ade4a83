"""The benchmarks still run: each script, at a tiny size, against the session's broker
and Redis. A benchmark that no longer starts (new settings it does not set, a renamed
option) would otherwise only show when somebody next needs its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from traitflow.config import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, settings: Settings) -> str:
    """`python -m <module> <args>` pointed at the session's services; its output
    (stdout, then its logs on stderr)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TRAITFLOW_")}
    env = inherited | {
        "TRAITFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TRAITFLOW_REDIS_URL": settings.redis_url,
        "TRAITFLOW_HOME": str(settings.home),
    }
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{module} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_pipeline_benchmark_runs_and_checks_every_profile(settings: Settings) -> None:
    out = run(
        "bench.pipeline", "--events", "400", "--users", "40", "--partitions", "2",
        "--anonymous", "0.1", settings=settings,
    )  # fmt: skip
    assert "profiles checked  40, wrong: 0" in out
    assert "commit conflicts" in out


def test_the_pipeline_benchmark_runs_one_command_of_two_processes(settings: Settings) -> None:
    out = run(
        "bench.pipeline", "--events", "400", "--users", "40", "--partitions", "2",
        "--processes", "2", settings=settings,
    )  # fmt: skip
    assert "2 processes of one command" in out
    assert "profiles checked  40, wrong: 0" in out


def test_the_commit_benchmark_runs_and_both_ways_write_the_same(settings: Settings) -> None:
    out = run(
        "bench.commit", "--profiles", "30,1200", "--runs", "1", "--commits", "2", settings=settings
    )
    assert "1200 profiles per commit (2401 checked keys)" in out
    assert out.count("script wall") == 2


def test_the_engine_benchmark_runs(settings: Settings) -> None:
    out = run(
        "bench.engine", "--events", "400", "--users", "40", "--repeat", "1", settings=settings
    )
    assert out.startswith("engine ")
    # its stream logs devices in to users: built without trust, every link was refused
    # and the figure measured no stitching
    assert "refused" not in out
    recomputing = run(
        "bench.engine", "--events", "400", "--users", "40", "--repeat", "1", "--recomputing",
        settings=settings,
    )  # fmt: skip
    assert recomputing.rstrip().endswith("recomputing)")


def test_the_memory_benchmark_runs_on_its_own_redis(settings: Settings) -> None:
    out = run("bench.memory", "--profiles", "40", "--sample", "10", settings=settings)
    assert "dead_letters 0, merges 40" in out  # every anonymous start merged into its user
    keys = next(line for line in out.splitlines() if line.startswith("keys "))
    for kind in ("state", "view", "version", "index user_id", "index email", "index anonymous_id"):
        assert f"{kind} 40," in keys + ","
    assert "at 1M profiles" in out
