"""Expression benchmark: microseconds per evaluation, our compiled closures vs the `cel` package.

    python -m bench.expressions --number 100000 --repeat 5

Rule-file filters and derived attributes run once per event on the worker's hot
path. Each expression is compiled once, as the worker does, then evaluated on one
event's activation; the reference is the Rust-backed `cel` package's compiled
`Program.execute`. Best of --repeat runs of --number evaluations.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

import cel

from attributes.expressions import DOUBLE, DYN, INT, STRING, compile_expression, map_of

VARIABLES = {
    "event": STRING,
    "properties": map_of(STRING, DYN),
    "purchase_count": INT,
    "lifetime_value": DOUBLE,
}

ACTIVATION: dict[str, Any] = {
    "event": "Order Completed",
    "properties": {
        "revenue": 120.0,
        "currency": "EUR",
        "products": [
            {"sku": "sku-1", "category": "kitchen"},
            {"sku": "sku-99", "category": "shoes"},
        ],
    },
    "purchase_count": 4,
    "lifetime_value": 190.5,
}

EXPRESSIONS = (
    'event == "Order Completed" && properties.revenue > 100.0',
    'properties.revenue > 100.0 && properties.currency == "EUR"',
    'event in ["Order Completed", "Checkout Started"]',
    "lifetime_value / double(purchase_count)",
    'properties.products.exists(p, p.category == "shoes")',
)


def microseconds(evaluate: Callable[[Any], Any], number: int, repeat: int) -> float:
    """Best time of one `evaluate(ACTIVATION)` call (timed through a C-level partial)."""
    timer = timeit.Timer(partial(evaluate, ACTIVATION))
    return 1e6 * min(timer.repeat(repeat=repeat, number=number)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'expression':60} {'ours':>8} {'cel':>8}   (us/eval)")
    for source in EXPRESSIONS:
        ours = compile_expression(source, VARIABLES).evaluate
        reference = cel.compile(source)
        assert ours(ACTIVATION) == reference.execute(ACTIVATION), source
        our_time = microseconds(ours, args.number, args.repeat)
        reference_number = max(1, args.number // 20)  # ~20x slower: same wall time
        their_time = microseconds(reference.execute, reference_number, args.repeat)
        print(f"{source:60} {our_time:8.2f} {their_time:8.2f}")


if __name__ == "__main__":
    main()
