"""The freshness benchmark still runs: a few probes, idle and under a little load,
against the session's broker and Redis, each served and timed."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_bench import run
from traitflow.config import Settings

pytestmark = pytest.mark.integration


def test_the_freshness_benchmark_times_every_probe_idle_and_under_load(
    settings: Settings,
) -> None:
    out = run("bench.freshness", "--rates", "0,200", "--probes", "5", settings=settings)
    lines = [line for line in out.splitlines() if line.startswith("load")]
    assert len(lines) == 2, out
    for line in lines:
        found = re.search(r"probes 5  p50 ([\d.]+) ms .*? p99 ([\d.]+) ms", line)
        assert found is not None, line
        assert 0 < float(found[1]) <= float(found[2])
