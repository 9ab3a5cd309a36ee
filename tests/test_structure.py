"""The package's shape, checked statically (no TensorFlow): import rules between the
subpackages, no import cycles, every subpackage packaged, and the tests run the checkout.

Imports are read with :mod:`ast` from every module of the package: module-level,
function-level and ``if TYPE_CHECKING:`` ones alike (the last flagged ``typing_only``),
relative ones resolved.

The layer order (:data:`LAYERS`) is the package's architecture: a module imports only from
its own package and from packages of lower layers, whether the import runs at import time,
inside a function or only for type checkers. ARCHITECTURE.md draws the same table.
"""

from __future__ import annotations

import ast
import os
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "featcache"
NOT_PACKAGED = {"tests", "benchmarks", "examples", "build", "dist", "cache", "runs"}
"""Top-level folders of the checkout that are not part of the package."""

GRPC = ("grpc", "grpc_health", "grpc_reflection", "featcache.protos")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "protos"),
    ("core",),  # option schema and checks, settings, splits, ranking, progress bars
    ("store", "backbones"),  # the HDF5 cache (h5py only here); building backbones
    ("extractor",),  # the extraction pipeline: sources, read, embed, record
    ("service", "audit"),  # the gRPC service (gRPC only here); dataset tools
    ("heads",),  # heads on cached features, fine-tuning, export, predict
    ("extraction", "serving"),  # extract() over every engine; serve() with Classify models
    ("commands",),  # the CLI's command modules
    ("cli",),  # the click group and the installed entry points
    ("featcache",),  # the package root: the public API, loaded lazily
)
"""Packages (and top-level modules) of ``featcache`` from the bottom up: each may import
its own modules and those of lower layers only; packages of one layer never import each
other."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    """The imported module, resolved: ``from . import x`` names the submodule when there is
    one; an external module keeps its dotted name (``grpc_health.v1``)."""
    path: Path
    line: int
    eager: bool
    """Runs when the importer is imported (not inside a function)."""
    typing_only: bool = False
    """Under ``if TYPE_CHECKING:``: never runs, but still a dependency."""

    def imports(self, module: str) -> bool:
        return self.target == module or self.target.startswith(module + ".")

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.target}"


def _package_dirs() -> Iterator[Path]:
    """Folders of the package: the root and every folder below it with an ``__init__.py``."""
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not d.endswith(".egg-info")
            and not (here == ROOT and d in NOT_PACKAGED)
        )
        if "__init__.py" in files:
            yield here


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__.py``)."""
    modules = {}
    for folder in _package_dirs():
        # A folder with an __init__.py below one without is not importable as featcache.*.
        if all((ROOT / p / "__init__.py").is_file() for p in folder.relative_to(ROOT).parents):
            for path in sorted(folder.glob("*.py")):
                modules[_module_name(path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    nodes: Iterable[ast.AST], eager: bool = True, typing_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, False, True)
            yield from _import_nodes(node.orelse, eager, typing_only)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, eager, typing_only
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _import_nodes(ast.iter_child_nodes(node), eager and not lazy, typing_only)


def imports_in(
    source: str, module: str, path: Path, is_package: bool, known: Iterable[str] = ()
) -> list[Import]:
    """The imports of one module's source; ``known``: the package's module names."""
    known = set(known)
    out = []
    for node, eager, typing_only in _import_nodes(ast.parse(source, str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 >= len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top")
                base = ".".join(
                    [*package[: len(package) - node.level + 1], *([base] if base else [])]
                )
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in dict.fromkeys(targets):
            out.append(Import(module, target, path, node.lineno, eager, typing_only))
    return out


@cache
def _all_imports() -> tuple[Import, ...]:
    modules = _modules()
    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found += imports_in(path.read_text(), name, path, is_package, modules)
    return tuple(found)


def _imports_from(subpackage: str) -> list[Import]:
    prefix = f"{PACKAGE}.{subpackage}"
    return [
        i for i in _all_imports() if i.importer == prefix or i.importer.startswith(prefix + ".")
    ]


def _listing(imports: Iterable[Import]) -> str:
    return "\n".join(f"  {i}" for i in imports)


def _cycles(nodes: set[str], edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan; the package is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(nodes):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        start = min(component)
        paths = {start: [start]}  # breadth first, inside the component, back to start
        queue = [start]
        cycle: list[str] | None = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w in sorted(edges.get(v, ())):
                if w == start:
                    cycle = [*paths[v], start]
                    break
                if w in component and w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        assert cycle is not None
        cycles.append(cycle)
    return cycles


# -- the import scanner itself --------------------------------------------------------------


def test_scanner_resolves_relative_and_flags_type_checking():
    source = """
from typing import TYPE_CHECKING
from . import sibling, value
from ...errors import CacheError
import click
if TYPE_CHECKING:
    import h5py
else:
    import numpy
def f():
    from ...heads import train
"""
    known = ["featcache.extractor.cache.sibling", "featcache.errors", "featcache.heads.train"]
    found = imports_in(
        source, "featcache.extractor.cache.reader", ROOT / "x.py", is_package=False, known=known
    )
    assert [(i.target, i.eager, i.typing_only) for i in found] == [
        ("typing", True, False),
        ("featcache.extractor.cache.sibling", True, False),
        ("featcache.extractor.cache", True, False),
        ("featcache.errors", True, False),
        ("click", True, False),
        ("h5py", False, True),
        ("numpy", True, False),
        ("featcache.heads.train", False, False),
    ]
    in_init = imports_in("from .cache import x", "featcache.extractor", ROOT / "x.py", True)
    assert [i.target for i in in_init] == ["featcache.extractor.cache"]


def test_cycle_finder():
    edges = {"a": ["b"], "b": ["d", "c"], "c": ["a", "e"], "d": [], "e": ["e"]}
    assert _cycles({"a", "b", "c", "d", "e"}, edges) == [["a", "b", "c", "a"]]
    assert _cycles({"a", "b"}, {"a": ["b"]}) == []


def test_scanner_sees_the_package():
    modules = _modules()
    assert {"featcache", "featcache.errors", "featcache.extractor"} <= set(modules)
    assert not any(name.startswith(("featcache.tests", "featcache.benchmarks")) for name in modules)
    assert any(i.importer == "featcache" and i.target == "featcache.errors" for i in _all_imports())


# -- import rules ------------------------------------------------------------------------------


def _group(module: str) -> str:
    """The package (or top-level module) of ``module``: ``featcache.store.reader`` ->
    ``store``; the root is ``featcache``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(group: str) -> int:
    for index, layer in enumerate(LAYERS):
        if group in layer:
            return index
    raise AssertionError(f"{group} is in no layer of LAYERS: add it to the table")


def _package_edges() -> dict[str, dict[str, Import]]:
    """Module -> package modules it depends on, each with one import saying why. Importing
    ``a.b.c`` runs ``a/b/__init__`` too (the root's lazy facade aside)."""
    modules = _modules()
    edges: dict[str, dict[str, Import]] = {}
    for i in _all_imports():
        target = i.target
        while target.count(".") >= 1:
            if (
                target in modules
                and target != i.importer
                and not i.importer.startswith(target + ".")
            ):
                edges.setdefault(i.importer, {}).setdefault(target, i)
            target = target.rpartition(".")[0]
        if i.target == PACKAGE and i.importer != PACKAGE:
            edges.setdefault(i.importer, {}).setdefault(PACKAGE, i)
    return edges


def test_every_package_has_a_layer():
    groups = {_group(m) for m in _modules()}
    missing = [g for g in sorted(groups) if not any(g in layer for layer in LAYERS)]
    assert not missing, f"packages in no layer of LAYERS: {missing}"
    named = [g for layer in LAYERS for g in layer]
    assert len(named) == len(set(named)), "a package is in two layers"
    assert set(named) - {"cli", "extraction", "serving", "errors"} <= groups | {PACKAGE}


def test_imports_follow_the_layers():
    """No import (eager, lazy or for type checkers) reaches a package of the same or a higher
    layer than the importer's, other than its own."""
    bad = []
    for i in _all_imports():
        if not i.target.startswith(PACKAGE):
            continue
        mine, theirs = _group(i.importer), _group(i.target)
        if mine != theirs and _layer(theirs) >= _layer(mine):
            bad.append(f"  {i} ({mine}: layer {_layer(mine)}, {theirs}: layer {_layer(theirs)})")
    assert not bad, (
        "imports against the layer order (tests/test_structure.py LAYERS):\n" + "\n".join(bad)
    )


def test_layer_rules_catch_an_upward_import():
    source = "from ..heads.train import train_head\n"
    found = imports_in(
        source, "featcache.store.reader", ROOT / "x.py", False, ["featcache.heads.train"]
    )
    (i,) = found
    assert _layer(_group(i.target)) > _layer(_group(i.importer))


def test_no_import_cycles():
    """No cycle between any two modules of the package, counting every import."""
    nodes = set(_modules())
    edges = _package_edges()
    cycles = _cycles(nodes, edges)
    report = [
        " -> ".join(cycle) + "\n" + "\n".join(f"    {edges[a][b]}" for a, b in pairwise(cycle))
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n  " + "\n  ".join(report)


@pytest.mark.parametrize(
    "subpackage",
    ["core", "store", "backbones", "extractor", "service", "audit", "heads", "protos"],
)
def test_no_click_outside_the_cli(subpackage):
    bad = [i for i in _imports_from(subpackage) if i.imports("click")]
    assert not bad, f"{subpackage}/ imports click (only cli.py and commands/ may):\n{_listing(bad)}"


def test_extractor_does_not_import_heads():
    bad = [i for i in _imports_from("extractor") if i.imports(f"{PACKAGE}.heads")]
    assert not bad, f"extractor/ imports heads/ (it must not know of heads):\n{_listing(bad)}"


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_grpc_only_in_the_service():
    allowed = (f"{PACKAGE}.service", f"{PACKAGE}.protos")
    bad = [
        i
        for i in _all_imports()
        if any(i.imports(name) for name in GRPC) and not _under(i.importer, *allowed)
    ]
    assert not bad, f"gRPC (or featcache.protos) imported outside service/:\n{_listing(bad)}"


def _eager_closure(module: str) -> dict[str, list[Import]]:
    """Modules that importing ``module`` imports, each with a chain of imports leading there
    (parent packages count: importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    modules = _modules()
    by_importer: dict[str, list[Import]] = {}
    for i in _all_imports():
        if i.eager:
            by_importer.setdefault(i.importer, []).append(i)
    chains: dict[str, list[Import]] = {module: []}
    queue = [module]
    while queue:
        current = queue.pop(0)
        for i in by_importer.get(current, []):
            parts = i.target.split(".")
            for n in range(1, len(parts) + 1):
                target = ".".join(parts[:n])
                if target not in chains:
                    chains[target] = [*chains[current], i]
                    if target in modules:
                        queue.append(target)
    return chains


@pytest.mark.parametrize("module", [PACKAGE, f"{PACKAGE}.cli"])
def test_no_eager_grpc_import(module):
    if module not in _modules():
        pytest.skip(f"no module {module}")
    chains = _eager_closure(module)
    bad = {name: chain for name, chain in chains.items() if _under(name, *GRPC)}
    assert not bad, f"`import {module}` imports gRPC:\n" + "\n".join(
        f"  {name}, via:\n{_listing(chain)}" for name, chain in sorted(bad.items())
    )


def test_h5py_only_in_the_cache_package():
    bad = [
        i
        for i in _all_imports()
        if i.imports("h5py") and not _under(i.importer, f"{PACKAGE}.store")
    ]
    assert not bad, f"h5py imported outside store/:\n{_listing(bad)}"


# -- packaging and the tested code ------------------------------------------------------------


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {PACKAGE: "."}
    listed = set(config["packages"])
    found = {_module_name(folder / "__init__.py") for folder in _package_dirs()}
    assert listed == found, (
        "[tool.setuptools] packages in pyproject.toml differ from the folders with an "
        f"__init__.py: missing {sorted(found - listed)}, not packages {sorted(listed - found)}"
    )


def test_featcache_is_this_checkout():
    import featcache

    location = Path(featcache.__file__).resolve().parent
    assert location == ROOT, (
        f"the tests import featcache from {location}, not from this checkout ({ROOT}): "
        'install it editable (pip install -e ".[dev]")'
    )


def test_no_package_module_imported_under_another_name():
    """pytest imports ``ROOT/__init__.py`` as ``<checkout folder name>`` unless conftest.py
    stops it; then the package is loaded twice (``main.errors`` next to ``featcache.errors``)."""
    names = {path.resolve(): name for name, path in _modules().items()}
    strays = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and names.get(Path(file).resolve(), name) != name:
            strays.append(f"{name} ({Path(file).resolve().relative_to(ROOT)})")
    assert not strays, f"package modules imported under other names: {sorted(strays)}"
    if ROOT.name != PACKAGE:
        assert ROOT.name not in sys.modules


def test_public_api_resolves_and_type_checkers_see_the_same_names():
    import featcache
    import featcache.errors

    lazy = set(featcache._LAZY)
    tree = ast.parse((ROOT / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for each in node.body
        if isinstance(each, ast.ImportFrom)
        for alias in each.names
    }
    assert typed == lazy, f"TYPE_CHECKING block and _LAZY differ: {typed ^ lazy}"
    for name in featcache.__all__:
        assert getattr(featcache, name) is not None, name
    errors = {
        name
        for name, value in vars(featcache.errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert errors <= set(featcache.__all__), errors - set(featcache.__all__)
    for name in ("extract", "train_head", "compare", "fine_tune", "export", "load_model"):
        assert name in featcache.__all__
    for name in ("predict_images", "predict_cache", "serve", "Client", "read_cache"):
        assert name in featcache.__all__
