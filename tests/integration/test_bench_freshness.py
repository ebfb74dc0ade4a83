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
    blocks = out.split("\nload ")[1:]
    assert len(blocks) == 2, out
    for rate, block in zip(("0", "200"), blocks, strict=True):
        assert block.startswith(f"{rate} events/s"), block
        assert "probes   5 sent, 5 seen" in block, block  # every probe served
        found = re.search(r"p50 ([\d.]+) ms  p90 ([\d.]+) ms  p99 ([\d.]+) ms  max", block)
        assert found is not None, block
        p50, p90, p99 = (float(value) for value in found.groups())
        assert 0 < p50 <= p90 <= p99
        assert re.search(r"worker   CPU \d+% of a core; [\d,]+ batches", block), block
