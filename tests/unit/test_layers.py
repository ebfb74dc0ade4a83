"""The layer contract: imports point down only, and no module imports itself back.

Layers, top down. A module may import its own layer and the layers below it; never a
layer above, nor the other layer of its own level:

    entry points   traitflow.cli, traitflow.cli_dead_letters, traitflow.cli_export,
                   traitflow.cli_keys (it makes the API's keys),
                   traitflow.cli_rules (its dry run runs the worker's parts),
                   traitflow.demo,
                   traitflow.replay (what `traitflow dead-letters` runs; nothing else
                   uses it), traitflow.__main__
    api | streams  the HTTP service | the worker: one level, neither imports the other
    core           the rest of traitflow/: settings, the store and its key layout,
                   Redis and broker clients, embedded services, durability
    attributes     the pure core: no I/O

bench/ and tests/ are outside the contract: they may import anything, and nothing in
a layer may import them. A new module is in its package's layer; a new command in
traitflow/ goes into `ENTRY_POINTS` here, or it is core and may not import api or
streams.

Every import statement counts, wherever it is: at module level, inside a function (a
deferred import is still a dependency, and the usual way to hide a cycle:
streams.batches and streams.fastfaust imported each other that way) and under
`if TYPE_CHECKING:` (a type-only import upward still ties the lower layer to the
upper one's names). Cycles are looked for over the same imports. Imports by name at
run time (`importlib`) are not seen; no layer makes any.

The checker is plain `ast` (no dependency); `test_the_checker_*` feed it synthetic
modules, so that it cannot pass by seeing nothing.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the packages the contract covers, and those outside it (nothing inside imports them)
PACKAGES = ("attributes", "traitflow", "streams", "api")
OUTSIDE = ("bench", "tests")

#: traitflow modules whose job is a command: the top layer
ENTRY_POINTS = (
    "traitflow.__main__",
    "traitflow.cli",
    "traitflow.cli_dead_letters",
    "traitflow.cli_export",
    "traitflow.cli_redis",
    "traitflow.cli_keys",
    "traitflow.cli_rules",
    "traitflow.demo",
    "traitflow.replay",
)


@dataclass(frozen=True)
class Layer:
    name: str
    #: higher imports lower; the same level with another name is off limits
    level: int
    #: the modules and packages it is made of (the longest match decides)
    members: tuple[str, ...]


LAYERS = (
    Layer("entry points", 3, ENTRY_POINTS),
    Layer("api", 2, ("api",)),
    Layer("streams", 2, ("streams",)),
    Layer("core", 1, ("traitflow",)),
    Layer("attributes", 0, ("attributes",)),
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    #: where the statement is: "streams/batches.py:86"
    where: str


def layer_of(module: str, layers: Iterable[Layer] = LAYERS) -> Layer | None:
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for member in layer.members:
            if (module == member or module.startswith(member + ".")) and (
                best is None or len(member) > best[0]
            ):
                best = (len(member), layer)
    return None if best is None else best[1]


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py file of the layered packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_in(
    module: str, source: str, known: Collection[str], *, package: bool = False, where: str = ""
) -> list[Import]:
    """The imports of project modules that `module`'s source makes, anywhere in it.
    `from a.b import c` imports `a.b.c` when that is a module in `known`, else `a.b`.
    `package`: the source is an `__init__.py` (relative imports start from itself)."""
    found = []
    home = module.split(".") if package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = home[: len(home) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                for alias in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):  # once per statement
            if target.split(".")[0] in (*PACKAGES, *OUTSIDE) and target != module:
                found.append(Import(module, target, f"{where or module}:{node.lineno}"))
    return found


def project_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    found = []
    for module, path in modules.items():
        found += imports_in(
            module,
            path.read_text(encoding="utf-8"),
            modules,
            package=path.name == "__init__.py",
            where=str(path.relative_to(root)),
        )
    return found


def violations(imports: Iterable[Import], layers: Iterable[Layer] = LAYERS) -> list[str]:
    """One line per import that breaks the contract, naming both modules and layers."""
    layers = tuple(layers)
    found = []
    for edge in imports:
        importer, imported = layer_of(edge.importer, layers), layer_of(edge.imported, layers)
        if importer is None:
            continue  # outside the contract
        target = f"layer {imported.name}" if imported else "outside the layers"
        said = (
            f"{edge.importer} (layer {importer.name}) imports {edge.imported} ({target}) "
            f"at {edge.where}: "
        )
        if imported is None:
            found.append(said + "nothing in a layer imports bench/ or tests/")
        elif imported.level > importer.level:
            found.append(said + f"{importer.name} is below {imported.name}; imports point down")
        elif imported.level == importer.level and imported is not importer:
            found.append(said + f"{importer.name} and {imported.name} are one level, independent")
    return found


def cycles(imports: Iterable[Import]) -> list[str]:
    """One line per group of modules that import each other, with one cycle through it
    and where each of its imports is."""
    graph: dict[str, dict[str, str]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge.where)
    found = []
    for group in _strongly_connected(graph):
        if len(group) < 2:
            continue
        start = min(group)
        path = _path_back(graph, start, group)
        hops = [graph[a][b] for a, b in itertools.pairwise(path)]
        found.append(f"import cycle: {' -> '.join(path)} ({', '.join(hops)})")
    return found


def _strongly_connected(graph: Mapping[str, Mapping[str, str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph.get(node, {}):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path_back(graph: Mapping[str, Mapping[str, str]], start: str, group: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside `group` (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, {})):
                if successor == start:
                    path = [node]
                    while (up := parent[path[-1]]) is not None:
                        path.append(up)
                    return [*reversed(path), start]
                if successor in group and successor not in parent:
                    parent[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is in a cycle with no path back")


# --- the contract -------------------------------------------------------------------------


def test_imports_point_down_only() -> None:
    broken = violations(project_imports())
    assert not broken, "layer contract broken (tests/unit/test_layers.py):\n" + "\n".join(broken)


def test_no_import_cycles() -> None:
    found = cycles(project_imports())
    assert not found, "\n".join(found)


def test_every_layered_module_has_a_layer_and_every_entry_point_exists() -> None:
    modules = project_modules()
    assert [m for m in modules if layer_of(m) is None] == []
    assert [m for m in ENTRY_POINTS if m not in modules] == []


def test_the_checker_sees_the_project() -> None:
    edges = {(edge.importer, edge.imported) for edge in project_imports()}
    assert len(edges) > 100
    assert ("streams.app", "traitflow.config") in edges  # module level
    assert ("traitflow.cli", "traitflow.demo") in edges  # inside a function


# --- the checker itself -------------------------------------------------------------------

SYNTHETIC = {
    "traitflow.fake": """
from __future__ import annotations
from typing import TYPE_CHECKING
from traitflow import store
import attributes.profile
if TYPE_CHECKING:
    from api.keys import KeyStore

def later():
    from streams import logs
""",
    "api.fake": "from streams.records import Record\nfrom . import keys\n",
    "streams.one": "from streams import two\n",
    "streams.two": "def late():\n    import streams.one\n",
    "attributes.fake": "import tests.unit.conftest\nfrom attributes.expressions import DYN\n",
    "traitflow.cli": "import api.keys, streams.app\n",
}
KNOWN = {
    *SYNTHETIC,
    "traitflow.store",
    "streams.logs",
    "streams.two",
    "api.keys",
    "attributes.profile",
    "attributes.expressions",
}


def synthetic_imports() -> list[Import]:
    return [edge for m, source in SYNTHETIC.items() for edge in imports_in(m, source, KNOWN)]


def test_the_checker_finds_every_kind_of_import() -> None:
    edges = {(edge.importer, edge.imported) for edge in synthetic_imports()}
    assert {
        ("traitflow.fake", "traitflow.store"),  # `from package import module`
        ("traitflow.fake", "attributes.profile"),
        ("traitflow.fake", "api.keys"),  # under TYPE_CHECKING
        ("traitflow.fake", "streams.logs"),  # inside a function
        ("api.fake", "api.keys"),  # relative
        ("streams.two", "streams.one"),
        ("attributes.fake", "attributes.expressions"),  # a name from a package
    } <= edges


def test_the_checker_names_both_modules_and_both_layers() -> None:
    broken = violations(synthetic_imports())
    assert (
        "traitflow.fake (layer core) imports api.keys (layer api) at traitflow.fake:7: "
        "core is below api; imports point down"
    ) in broken
    assert any(
        line.startswith("traitflow.fake (layer core) imports streams.logs (layer streams)")
        for line in broken
    )
    assert any(
        line.startswith("api.fake (layer api) imports streams.records (layer streams)")
        and line.endswith("api and streams are one level, independent")
        for line in broken
    )
    assert any(
        line.startswith("attributes.fake (layer attributes) imports tests.unit.conftest")
        for line in broken
    )
    # down, within a layer, and from the top: allowed
    assert len(broken) == 4, broken


def test_the_checker_reports_a_cycle_through_a_deferred_import() -> None:
    assert cycles(synthetic_imports()) == [
        "import cycle: streams.one -> streams.two -> streams.one (streams.one:1, streams.two:2)"
    ]
