"""The consumer patch copies private faust-streaming code: the pin and the patch must agree."""

from __future__ import annotations

import re
from pathlib import Path

import faust

from streams import fastfaust

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_pins_exactly_a_version_the_patch_was_made_for() -> None:
    pins = re.findall(r'"faust-streaming==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert len(pins) == 1
    assert pins[0] in fastfaust.PATCHED_VERSIONS


def test_the_installed_faust_is_patched() -> None:
    assert faust.__version__ in fastfaust.PATCHED_VERSIONS
    assert fastfaust.install()
    assert fastfaust.install()  # idempotent
    from faust.transport.consumer import Consumer

    assert Consumer._drain_messages is fastfaust._drain_messages
