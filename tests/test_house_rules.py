"""The package's structure, checked from its source: layers, circles, module and function size.

The layers (README, "Layout"), low to high; a module imports only from its own layer or lower
ones, and no set of modules imports itself in a circle:

    0 base         isometry._io, _numerics, _stack, _params, _adapters, data, augment
    1 plots        isometry.plot (data in, figures out)
    2 math         isometry.theory, isometry.toy
    3 models       models
    4 engine       isometry._jacobian, _spectra, _spectrum…, _golub_kahan, _lanczos…, _layerwise,
                   _sharding, _cpu_mesh, calibrate
    5 analysis     isometry._diagnose…, _tune, _sampling, theory_residual, train, tracking
    6 experiments  isometry.experiments
    7 cli          isometry.cli, isometry.__main__

The facade `isometry` (`isometry/__init__.py`) re-exports layers 0–5, so only experiments and
the CLI may import it; the `models` package is layer 3 as a whole. Every import is read,
including those inside functions, so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("isometry", "models")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Longest matching prefix wins.
LAYERS = {
    "isometry._io": 0, "isometry._numerics": 0, "isometry._stack": 0, "isometry._params": 0,
    "isometry._adapters": 0, "isometry.data": 0, "isometry.augment": 0,
    "isometry.plot": 1, "isometry._plot": 1,
    "isometry.theory": 2, "isometry.toy": 2,
    "models": 3,
    "isometry._jacobian": 4, "isometry._spectr": 4, "isometry._results": 4, "isometry._lanczos": 4,
    "isometry._golub": 4, "isometry._slq": 4, "isometry._top": 4, "isometry._layerwise": 4,
    "isometry._sharding": 4, "isometry._data_parallel": 4, "isometry.calibrate": 4,
    "isometry._diagnos": 5, "isometry.diagnos": 5, "isometry._tune": 5,
    "isometry.theory_residual": 5, "isometry.train": 5, "isometry._train": 5,
    "isometry._run": 5, "isometry.tracking": 5, "isometry._optim": 5, "isometry._sampling": 5,
    "isometry._cpu_mesh": 4,
    "isometry.experiments": 6,
    "isometry.cli": 7, "isometry.__main__": 7,
}
FACADE_LAYER = 5.5  # `import isometry`: above everything it re-exports


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _layer(module: str) -> float | None:
    if module == "isometry":
        return FACADE_LAYER
    best = max((k for k in LAYERS if module == k or module.startswith(k)), key=len, default=None)
    return None if best is None else LAYERS[best]


def _imports(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `module` imports (resolved to the deepest known module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            names = subs if all(s in known for s in subs) else [base] + subs
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {m: _imports(m, p, known) for m, p in sources.items()}


def test_every_module_has_a_layer():
    missing = [m for m in _sources() if _layer(m) is None]
    assert not missing, f"modules without a layer in LAYERS (add them): {missing}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = []
    for module, deps in _graph().items():
        if module == "isometry":
            continue
        for dep in deps:
            if _layer(dep) is not None and _layer(module) is not None \
                    and _layer(dep) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) -> {dep} (layer {_layer(dep)})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle():
    graph = {m: deps for m, deps in _graph().items() if m != "isometry"}
    state: dict[str, int] = {}
    circles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif state.get(dep) is None:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("module", sorted(_sources()))
def test_module_and_function_size(module):
    path = _sources()[module]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({n} lines, line {node.lineno})")
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


LAZY_IMPORTS_ALLOWED = ("isometry.cli",)  # a command imports what it runs, so `--help` starts fast


def test_imports_at_module_top():
    """Imports inside functions hide the dependency graph; only the CLI's commands may import lazily."""
    hidden = []
    for module, path in _sources().items():
        if module.startswith(LAZY_IMPORTS_ALLOWED):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{module}:{n.lineno}" for n in ast.walk(fn)
                           if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not hidden, f"imports inside functions: {sorted(set(hidden))}"


def test_no_private_name_imported_across_modules():
    known = set(_sources())
    private = []
    for module, path in _sources().items():
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and (n.module or n.level):
                base = n.module or ""
                private += [f"{module}: from {'.' * n.level}{base} import {a.name}"
                            for a in n.names if a.name.startswith("_")
                            and not any(k.endswith("." + a.name) for k in known)]
    assert not private, "\n".join(private)
