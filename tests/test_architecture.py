"""The layout holds: no import cycles, no upward imports, no function over 100 lines.

The import graph is computed from the source with `ast` (every import statement counts,
also one inside a function or under `if TYPE_CHECKING:`: a late import that dodges a cycle
is still a cycle). Packages are ranked from the bottom up (`ENGINE_LAYERS`, `DAEMON_LAYERS`,
as docs/ARCHITECTURE.md draws them); a module may import its own package and the packages
ranked below it, never one above. `selva_engine` never imports `selvad`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

# Bottom first. A name is a subpackage or a top-level module of the package.
ENGINE_LAYERS = ("io", "errors", "device", "model", "outputs", "audio", "text", "video", "weights", "data",
                 "inference", "evaluation", "training", "conformance", "train", "cli")
DAEMON_LAYERS = ("display", "log", "config", "datasets", "runs", "service", "web", "doctor", "demo", "cli")
MAX_FUNCTION_LINES = 100
SOURCE_DIRS = ("selva_engine", "selvad", "bench", "tests")


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = {**_modules("selva_engine"), **_modules("selvad")}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Project modules `module` imports (anywhere in the file), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("selva_engine", "selvad")}
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] not in ("selva_engine", "selvad"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m != module}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        deps = set()
        for d in imports_of(m):
            while d not in MODULES and "." in d:
                d = d.rsplit(".", 1)[0]
            if d in MODULES and d != m:
                deps.add(d)
        graph[m] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _rank(module: str) -> tuple[str, int]:
    parts = module.split(".")
    layers = ENGINE_LAYERS if parts[0] == "selva_engine" else DAEMON_LAYERS
    if len(parts) == 1:
        return parts[0], -1  # the package's own __init__ (kept empty)
    assert parts[1] in layers, f"{module}: package {parts[1]!r} is not in the layer list"
    return parts[0], layers.index(parts[1])


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_upward_imports() -> None:
    upward = []
    for module, deps in _graph().items():
        top, rank = _rank(module)
        for dep in deps:
            dep_top, dep_rank = _rank(dep)
            if top == "selva_engine" and dep_top == "selvad":
                upward.append(f"{module} -> {dep} (the engine never imports the daemon)")
            elif dep_top == top and dep_rank > rank:
                upward.append(f"{module} -> {dep}")
    assert not upward, "upward imports:\n  " + "\n  ".join(sorted(upward))


def test_every_package_is_layered_and_documented() -> None:
    doc = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for top, layers in (("selva_engine", ENGINE_LAYERS), ("selvad", DAEMON_LAYERS)):
        for child in sorted((REPO_ROOT / top).iterdir()):
            name = child.stem
            if name.startswith("__") or (child.is_file() and child.suffix != ".py"):
                continue
            assert name in layers, f"{top}/{child.name} is in no layer of this test"
            shown = f"{name}/" if child.is_dir() else f"{name}.py"
            assert shown in doc, f"docs/ARCHITECTURE.md does not describe {top}/{shown}"


def longest_functions(limit: int = 10) -> list[tuple[int, str]]:
    """The `limit` longest functions of the project: (lines, 'path:name')."""
    rows = []
    for d in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / d).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    rows.append((lines, f"{path.relative_to(REPO_ROOT)}:{node.name}"))
    return sorted(rows, reverse=True)[:limit]


def test_no_function_over_100_lines() -> None:
    rows = longest_functions()
    print("longest functions:\n" + "\n".join(f"  {n:4d} {where}" for n, where in rows))
    too_long = [f"{where} ({n} lines)" for n, where in rows if n > MAX_FUNCTION_LINES]
    assert not too_long, "functions over 100 lines: " + ", ".join(too_long)


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path) -> None:
    """The graph code sees late imports and TYPE_CHECKING imports, so it can fail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
           "    from selva_engine.training.options import TrainConfig\n"
           "def f():\n    from selvad.runs import queue\n")
    MODULES["selva_engine.model._probe"] = path = tmp_path / "probe.py"
    path.write_text(src)
    try:
        assert imports_of("selva_engine.model._probe") == {
            "selva_engine.training.options", "selvad.runs.queue"}
        assert _rank("selva_engine.model._probe")[1] < _rank("selva_engine.training.options")[1]
    finally:
        del MODULES["selva_engine.model._probe"]
