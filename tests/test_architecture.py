"""The package's shape: imports run one way through the layers, and no module or function grows past
what a reader takes in at once (docs/architecture.md draws the map these tests hold the code to).

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of an
``effnet_cli`` module counts, at module level or inside a function, because a lazy import is still an
arrow a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "effnet_cli"

# Floors, bottom to top: a module may import from its own floor or lower ones. The package root
# (`effnet_cli/__init__.py`, lazy public re-exports) and the `effnet_cli.hub` facade sit on top.
FLOORS: dict[str, int] = {
    "effnet_cli.errors": 0,
    "effnet_cli.host": 0,
    "effnet_cli.interrupts": 0,
    "effnet_cli.malloc": 0,
    "effnet_cli.resources": 0,
    "effnet_cli.records": 1,
    "effnet_cli.output": 2,
    "effnet_cli.weights": 3,
    "effnet_cli.data": 4,
    "effnet_cli.core": 5,
    "effnet_cli.convert": 6,
    "effnet_cli.runtime": 7,
    "effnet_cli.scale": 8,
    "effnet_cli.training": 8,
    "effnet_cli.similar": 8,
    "effnet_cli.explain": 8,
    "effnet_cli.report": 8,
    "effnet_cli.cli": 9,
    "effnet_cli.__main__": 9,
    "effnet_cli.hub": 10,
    "effnet_cli": 10,
}

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int:
    """The floor of the longest FLOORS prefix that names `module` or a package above it."""
    name = module
    while name:
        if name in FLOORS:
            return FLOORS[name]
        name = name.rpartition(".")[0]
    raise AssertionError(f"{module} is on no floor: add its folder to FLOORS and to docs/architecture.md")


def known_module(dotted: str) -> str | None:
    """The effnet_cli module that `dotted` (a module, or a name inside one) resolves to."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def imports_of(module: str) -> Iterator[str]:
    """Every effnet_cli module `module` imports, lazily or not."""
    path = MODULES[module]
    yield from imports_in(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every effnet_cli module that `source`, the text of `module`, imports anywhere in its body."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("effnet_cli"):
                resolved = known_module(target)
                if resolved and resolved != module:
                    yield resolved


GRAPH: dict[str, set[str]] = {module: set(imports_of(module)) for module in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each one is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_import_graph_has_no_circle() -> None:
    circles = strongly_connected(GRAPH)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_imports_run_down_the_floors() -> None:
    upward = sorted(
        f"{source} (floor {floor_of(source)}) -> {target} (floor {floor_of(target)})"
        for source, targets in GRAPH.items()
        for target in targets
        if floor_of(target) > floor_of(source)
    )
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_nothing_below_the_top_imports_the_package_root() -> None:
    # The root only re-exports: a module that imports it depends on everything the root names.
    importers = sorted(m for m, targets in GRAPH.items() if "effnet_cli" in targets and floor_of(m) < 10)
    assert not importers, f"import the defining module instead of the package root: {importers}"


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    # The graph must count imports inside functions, or a circle could hide behind one.
    source = (
        "def f():\n"
        "    from effnet_cli.data import decode\n"
        "    import effnet_cli.errors\n"
        "    from ..output.atomic import write_bytes\n"
    )
    found = set(imports_in(source, "effnet_cli.records.stream"))
    assert found == {"effnet_cli.data.decode", "effnet_cli.errors", "effnet_cli.output.atomic"}
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def python_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def test_no_module_over_500_lines() -> None:
    too_long = [f"{p.relative_to(ROOT)} ({p.read_text(encoding='utf-8').count(chr(10))} lines)" for p in python_files()
                if p.read_text(encoding="utf-8").count("\n") > MAX_MODULE_LINES]
    assert not too_long, "modules to split by job:\n" + "\n".join(too_long)


def test_no_function_over_80_lines() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in python_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not too_long, "functions to split:\n" + "\n".join(too_long)
