"""A non-editable install works: the wheel, installed into a fresh virtualenv outside
the checkout, runs the CLI and imports every module of every package.

The README's commands install the project editable, which finds modules in the
checkout whether or not the wheel ships them: that is how a hand-written package list
once left `attributes/expressions/` out of every real install unnoticed. Packages are
discovered now (pyproject.toml); this keeps it so, for any module added later."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attributes", "streams", "api", "traitflow")
#: what a checkout holds besides its files (environments, caches, builds, services)
LEFT_BEHIND = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".traitflow")


def checkout_modules() -> list[str]:
    """Every module of the shipped packages, as the checkout has them (but `__main__`,
    which runs the CLI when imported)."""
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installed_elsewhere_runs_the_cli_and_imports_every_module(
    tmp_path: Path,
) -> None:
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "cwd"
    elsewhere.mkdir()
    # built from a copy: setuptools would add whatever an earlier build left in build/
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."], source)
    (wheel,) = wheels.glob("traitflow-*.whl")
    shipped = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    shipped = {top for top in shipped if not top.endswith(".dist-info")}
    assert shipped == set(PACKAGES), "the wheel ships the four packages (no tests, no bench)"

    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], elsewhere)

    assert "validate" in run([str(venv / "bin" / "traitflow"), "--help"], elsewhere)
    validated = run(
        [str(venv / "bin" / "traitflow"), "validate", str(ROOT / "examples" / "rules.yaml")],
        elsewhere,
    )
    assert "attributes OK" in validated

    modules = checkout_modules()
    assert "attributes.expressions.compiler" in modules
    script = (
        "import importlib, sys\n"
        "outside = []\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    if not module.__file__.startswith({str(venv)!r}):\n"
        "        outside.append((name, module.__file__))\n"
        "print(outside)\n"
    )
    assert run([str(python), "-c", script], elsewhere).strip() == "[]"
