"""The import rules of ARCHITECTURE.md, read from its table and checked on every import the code makes (issue 26):
each module has a layer and imports nothing above it, no two modules import each other round a circle, plugins
never import the runs layer and classifiers never import denoisers, and the statistics need no torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("certify", "denoisers", "classifiers")


def _layers() -> dict[str, int]:
    """ARCHITECTURE.md's table: a path (a file, or a folder ending in /) -> its layer number."""
    out = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        row = re.match(r"\| (\d)\. [^|]+\| ([^|]+)\|", line)
        if row:
            for path in re.findall(r"`([\w/.]+)`", row.group(2)):
                out[path] = int(row.group(1))
    return out


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for f in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def _runtime_imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``module`` imports when it runs (function-level imports too; not those under
    ``if TYPE_CHECKING:``, which only type checkers read)."""
    found = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
            for name, path in modules.items()}


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/", *(f"{'/'.join(module.split('.')[:k])}/" for k in
                                                  range(len(module.split(".")) - 1, 0, -1))):
        if candidate in layers:
            return layers[candidate]
    return 1 if module == "certify" else None  # the package itself only loads its names on first use


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    layers, graph = _layers(), _graph()
    missing = sorted(m for m in graph if _layer_of(m, layers) is None)
    assert not missing, f"modules missing from ARCHITECTURE.md's table: {missing}"
    upward = [f"{m} (layer {_layer_of(m, layers)}) imports {d} (layer {_layer_of(d, layers)})"
              for m, deps in graph.items() for d in deps if _layer_of(d, layers) > _layer_of(m, layers)]
    assert not upward, upward


def test_no_two_modules_import_each_other_round_a_circle():
    graph = _graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan: a strongly connected set of two or more modules is a circle
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                circles.append(sorted(group))

    for v in graph:
        if v not in index:
            connect(v)
    assert not circles, circles


def test_plugins_never_import_the_runs_layer_and_classifiers_never_import_denoisers():
    layers, graph = _layers(), _graph()
    for module, deps in graph.items():
        if module.startswith(("denoisers", "classifiers")):
            assert all(_layer_of(d, layers) < 4 for d in deps), (module, sorted(deps))
        if module.startswith("classifiers"):
            assert not any(d.startswith("denoisers") for d in deps), (module, sorted(deps))


def test_the_statistics_need_numpy_and_scipy_only():
    code = ("import sys, certify.stats, certify.betting, certify.boundary, certify.selection; "
            "print(sorted(m for m in ('torch', 'certify.smoothing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_rules_can_fail():
    """A circle and an upward import planted in a toy graph are found (the checks above are not vacuous)."""
    tree = ast.parse("from .settings import RunSettings\nif TYPE_CHECKING:\n    from .cli import main\n")
    assert _runtime_imports(tree, "certify.stats", False, {"certify.settings", "certify.cli"}) == {"certify.settings"}
    assert _layer_of("certify.stats", _layers()) < _layer_of("certify.settings", _layers())
