"""Comments and docstrings say why, not what a benchmark once printed (issue 14).

A measured figure in a docstring goes stale the day the code around it changes, and
nothing tells the reader: figures live in `bench/README.md` with the command that
produced them and the machine, and the code points there. This check finds the two
shapes such figures took: an approximate measurement (`~48 us`, `~0.7 s`, `~100k
records/s`) and a date (a measurement's day), in comments and docstrings only: an
example payload's timestamp in a string is data, not a claim.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attributes", "streams", "traitflow", "api")

UNITS = r"(?:µs|us|ms|s|k|%|x|\u00d7|records/s|events/s|reads/s)"
FIGURE = re.compile(rf"~\s?\d[\d,.]*(?:\s?-\s?\d[\d,.]*)?\s?{UNITS}(?![\w/])")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def prose(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring of a module's source."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                text = body[0].value.value
                if isinstance(text, str):
                    yield body[0].lineno, text


def stale_figures(source: str) -> list[tuple[int, str]]:
    found = []
    for line, text in prose(source):
        for pattern in (FIGURE, DATE):
            found += [(line, match.group(0)) for match in pattern.finditer(text)]
    return found


def test_no_measured_figures_or_dates_in_comments_and_docstrings() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {figure!r}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, figure in stale_figures(path.read_text())
    ]
    assert problems == [], "move these to bench/README.md and cite the reason:\n" + "\n".join(
        problems
    )


def test_the_check_finds_figures_and_dates_but_not_data() -> None:
    source = '''
"""Fast: ~48 us a message (measured 2026-11-23)."""
EXAMPLE = {"first_seen": "2026-10-01T10:00:00.000Z"}
TIMEOUT_MS = 500  # the consumer default, 500 ms: a setting, not a measurement
def f() -> None:
    """It made the collector pause ~100 ms."""
    x = 1  # ~15% of the CPU
'''
    found = sorted(figure for _, figure in stale_figures(source))
    assert found == sorted(["~48 us", "2026-11-23", "~100 ms", "~15%"])
