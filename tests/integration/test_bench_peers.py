"""The peer benchmark still runs: traitflow's two rows at a tiny size against the
session's services (Quix Streams' rows need its virtualenv: pip and the network)."""

from __future__ import annotations

import pytest

from tests.integration.test_bench import run
from traitflow.config import Settings

pytestmark = pytest.mark.integration


def test_the_peer_benchmark_checks_every_user_of_both_traitflow_rows(settings: Settings) -> None:
    out = run("bench.peers", "--events", "400", "--users", "40", "--skip-quix", settings=settings)
    assert "traitflow, the four " in out
    assert "traitflow, reference rules + the four " in out
    assert out.count("checked 40, wrong 0") == 2
