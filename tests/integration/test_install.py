"""A non-editable install works: the wheel, installed into a fresh virtualenv outside
the checkout, runs the CLI and imports every module of every package.

The README's commands install the project editable, which finds modules in the
checkout whether or not the wheel ships them: that is how a hand-written package list
once left `attributes/expressions/` out of every real install unnoticed. Packages are
discovered now (pyproject.toml); this keeps it so, for any module added later.

The wheel is built from what the Dockerfile copies before its `pip install .`, so the
image gets what this test installed. The dependencies come through pip as for any
install (pip reads them from the wheel's metadata), from its cache and the configured
indexes: about 20 s in all on the development machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from api import explorer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attributes", "streams", "api", "traitflow")
#: what a checkout holds besides its files (environments, caches, builds, services)
LEFT_BEHIND = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".traitflow")
#: variables that would let the fresh virtualenv see the checkout or another environment
LEAKS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


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


def docker_build_context(destination: Path) -> None:
    """Copy what the Dockerfile copies before `RUN pip install .` to `destination`, as
    its COPY lines place it under WORKDIR (caches and builds left out)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    install = next(n for n, line in enumerate(lines) if line.startswith("RUN pip install ."))
    for line in lines[:install]:
        if not line.startswith("COPY "):
            continue
        *sources, target = [word for word in line.split()[1:] if not word.startswith("--")]
        for source in sources:
            into = destination / target
            if target.endswith("/"):
                into = into / Path(source).name
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, into)


def run(command: list[str], cwd: Path) -> str:
    env = {name: value for name, value in os.environ.items() if name not in LEAKS}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installed_elsewhere_runs_the_cli_and_imports_every_module(
    tmp_path: Path,
) -> None:
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "cwd"
    elsewhere.mkdir()
    # built from a copy (setuptools would add whatever an earlier build left in build/)
    # of what the image is built from
    source = tmp_path / "source"
    docker_build_context(source)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."], source)
    (wheel,) = wheels.glob("traitflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert shipped == set(PACKAGES), "the wheel ships the four packages (no tests, no bench)"
    for package in PACKAGES:  # PEP 561: their type hints are for their users' type checkers
        assert f"{package}/py.typed" in names, package
    for page in [*explorer.PAGES.values(), *explorer.ASSETS]:  # package data, not modules
        assert f"api/{explorer.STATIC.name}/{page}" in names, page

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
