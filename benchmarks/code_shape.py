"""The package's shape: files and lines per package, the largest files, how many places
spell an option, and import cycles (issue 24's before/after figures).

    python benchmarks/code_shape.py [--json]

Reads the checkout's sources only (no import of featcache). Lines are physical lines of
``.py`` files; tests, benchmarks and examples are not the package. An option is "spelled"
on a line of the package (``.py`` or ``.proto``) that names it as a word, a constant
(``DEFAULT_DROPOUT``) or a flag (``--batch-size``).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGE = {"tests", "benchmarks", "examples", "build", "dist", "cache", "runs", "docs"}
OPTIONS = ("dropout", "projection", "batch_size")


def package_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_PACKAGE or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".py", ".proto") and "_pb2" not in path.name:
            files.append(path)
    return files


def group(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] + "/" if len(rel.parts) > 1 else "(root)"


def is_adapter(path: Path) -> bool:
    """The CLI (``cli.py``, ``commands/``) and the gRPC conversion and client (``convert.py``,
    ``client.py`` of the service, wherever it lives)."""
    rel = path.relative_to(ROOT)
    return (
        rel.name == "cli.py"
        or rel.parts[0] == "commands"
        or ("service" in rel.parts and rel.name in ("convert.py", "client.py"))
    )


def spelled(files: list[Path], option: str) -> tuple[int, int]:
    dashed = option.replace("_", "-")
    pattern = re.compile(rf"(?<![\w-])(?:{option}|DEFAULT_{option.upper()}|--{dashed})(?![\w-])")
    lines = 0
    where = set()
    for path in files:
        for line in path.read_text().splitlines():
            if pattern.search(line):
                lines += 1
                where.add(path)
    return lines, len(where)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("featcache", *parts))


def imports(files: list[Path]) -> dict[str, set[str]]:
    """Module -> package modules it imports (eager, lazy and TYPE_CHECKING alike; explicit
    imports of the root package count, the root run before every submodule does not)."""
    modules = {module_name(p): p for p in files if p.suffix == ".py"}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [*package[: len(package) - node.level + 1], *filter(None, [base])]
                    )
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target == "featcache" and name != "featcache":
                    edges[name].add(target)
                # importing a.b.c runs a/b/__init__ too (the root's lazy facade aside)
                while target.count(".") >= 1:
                    if target != name and not name.startswith(target + "."):
                        edges[name].add(target)
                    target = target.rpartition(".")[0]
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = package_files()
    py = [p for p in files if p.suffix == ".py"]
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    sizes = Counter()
    for path in py:
        n = len(path.read_text().splitlines())
        per[group(path)][0] += 1
        per[group(path)][1] += n
        sizes[str(path.relative_to(ROOT))] = n
    total = sum(v[1] for v in per.values())
    found = cycles(imports(files))
    result = {
        "packages": {
            k: {"files": v[0], "lines": v[1], "share": round(v[1] / total, 3)}
            for k, v in sorted(per.items())
        },
        "total_lines": total,
        "largest": sizes.most_common(5),
        "spelled": {o: dict(zip(("lines", "files"), spelled(files, o))) for o in OPTIONS},
        "spelled_in_adapters": {
            o: dict(zip(("lines", "files"), spelled([f for f in files if is_adapter(f)], o)))
            for o in OPTIONS
        },
        "import_cycles": [
            " <-> ".join(c) if len(c) < 5 else f"{len(c)} modules: {', '.join(c[:6])}, ..."
            for c in found
        ],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'package':<14}{'files':>6}{'lines':>8}{'share':>7}")
    for k, v in result["packages"].items():
        print(f"{k:<14}{v['files']:>6}{v['lines']:>8}{v['share']:>7.0%}")
    print(f"{'total':<14}{len(py):>6}{total:>8}")
    print("largest:", ", ".join(f"{p} ({n})" for p, n in result["largest"]))
    for o, v in result["spelled"].items():
        a = result["spelled_in_adapters"][o]
        print(
            f"{o}: {v['lines']} lines in {v['files']} files; in the CLI and the gRPC "
            f"conversion and client: {a['lines']} lines in {a['files']} files"
        )
    print(f"import cycles: {len(found)}")
    for c in result["import_cycles"]:
        print("  ", c)


if __name__ == "__main__":
    main()
