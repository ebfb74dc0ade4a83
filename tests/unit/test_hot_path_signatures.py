"""On the hot path, a function takes at most three arguments by position (issue 14).

`apply_event` once took ten, two of them ints next to each other (`offset`, `now`) and
two of them mappings: a swap type-checks and computes a wrong profile. Past three
parameters, the rest are keyword-only (`*`), so that every call names them; the cost,
a few tens of nanoseconds a call, is lost in the per-event work (bench/README.md,
"Issue 14"). `self` and `cls` do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the modules an event or a batch goes through (per event, per profile or per batch)
HOT_PATH = (
    "attributes/aggregators.py",
    "attributes/merge.py",
    "attributes/multisets.py",
    "attributes/profile.py",
    "attributes/stitching.py",
    "attributes/windows.py",
    "streams/applying.py",
    "streams/batches.py",
    "streams/decoding.py",
    "streams/effects.py",
    "streams/entity.py",
    "streams/lifetimes.py",
    "streams/processor.py",
    "streams/records.py",
    "streams/rendering.py",
    "streams/rule_versions.py",
    "traitflow/redis_store.py",
    "traitflow/state_cache.py",
    "traitflow/store.py",
)
MAX_POSITIONAL = 3


def too_positional(source: str) -> list[str]:
    """`name (line): n positional` for each function taking more than three by position."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = [*node.args.posonlyargs, *node.args.args]
            positional = [a.arg for a in arguments if a.arg not in ("self", "cls")]
            if len(positional) > MAX_POSITIONAL:
                found.append(f"{node.name} (line {node.lineno}): {', '.join(positional)}")
    return found


def test_hot_path_functions_take_at_most_three_arguments_by_position() -> None:
    problems = [
        f"{module}: {problem}"
        for module in HOT_PATH
        for problem in too_positional((ROOT / module).read_text())
    ]
    assert problems == [], "make the rest keyword-only:\n" + "\n".join(problems)


def test_the_check_sees_methods_and_keyword_only_arguments() -> None:
    source = """
class Aggregator:
    def add(self, state, value, ts, mid): ...
    def fine(self, state, value, *, ts, mid): ...
async def apply(state, event, ts, rules, source): ...
def short(a, b, c): ...
"""
    assert sorted(too_positional(source)) == [
        "add (line 3): state, value, ts, mid",
        "apply (line 5): state, event, ts, rules, source",
    ]


def test_every_hot_path_module_exists() -> None:
    assert [module for module in HOT_PATH if not (ROOT / module).is_file()] == []
