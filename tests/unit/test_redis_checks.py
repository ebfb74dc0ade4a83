from __future__ import annotations

import pytest

from traitflow.redis_checks import eviction_problem


@pytest.mark.parametrize(
    "policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-ttl"]
)
def test_a_policy_that_can_evict_is_a_problem_naming_it_and_the_fix(policy: str) -> None:
    problem = eviction_problem({"maxmemory_policy": policy, "maxmemory": 1 << 30})
    assert problem is not None
    assert f"maxmemory-policy is {policy}" in problem
    assert "Set maxmemory-policy noeviction" in problem


def test_noeviction_is_safe_and_an_unknown_answer_is_not_judged() -> None:
    assert eviction_problem({"maxmemory_policy": "noeviction"}) is None
    assert eviction_problem({}) is None  # a Redis-compatible server that does not say
