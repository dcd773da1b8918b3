"""The package's structure, checked from its source: layers, circles, module and function size.

The layers (README, "Layout"), low to high; a module imports only from its own layer or lower
ones, and no set of modules imports itself in a circle:

    0 base         isometry._io, _numerics, _stack, _params, _adapters, calibrate, data, augment, toy
    1 math, plots  isometry.theory, isometry.plot
    2 models       models
    3 linalg       isometry.linalg (Jacobians, Golub–Kahan, LAPACK on the CPU)
    4 spectrum     isometry.spectrum (results, engines, spectrum_fn, layerwise)
    5 parallel     isometry.parallel (meshes, sharded spectra)
    6 training     isometry.train (loop, tracker, run directory)
    7 diagnosis    isometry.diagnosis (diagnose, diagnose_run, tune_init)
    8 experiments  isometry.experiments
    9 cli          isometry.cli, isometry.__main__

A layer name matches a module and the modules under it (on dotted boundaries: "isometry.toy"
is not a prefix of "isometry.toys"); every name in the table matches a module. The facade
`isometry` (`isometry/__init__.py`) re-exports layers 0–7, so only experiments and the CLI may
import it; the `models` package is layer 2 as a whole. Every import is read, including those
inside functions and `importlib.import_module`/`__import__` calls (an f-string is read up to
its first placeholder), so neither a lazy nor a dynamic import can hide an edge.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("isometry", "models")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Longest matching name wins.
LAYERS = {
    "isometry._io": 0, "isometry._numerics": 0, "isometry._stack": 0, "isometry._params": 0,
    "isometry._adapters": 0, "isometry.calibrate": 0, "isometry.data": 0, "isometry.augment": 0,
    "isometry.toy": 0,
    "isometry.theory": 1, "isometry.plot": 1,
    "models": 2,
    "isometry.linalg": 3,
    "isometry.spectrum": 4,
    "isometry.parallel": 5,
    "isometry.train": 6,
    "isometry.diagnosis": 7,
    "isometry.experiments": 8,
    "isometry.cli": 9, "isometry.__main__": 9,
}
FACADE_LAYER = 7.5  # `import isometry`: above everything it re-exports


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
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len,
               default=None)
    return None if best is None else LAYERS[best]


DYNAMIC_IMPORTS = ("import_module", "__import__")


def _dynamic_import(node: ast.AST) -> str | None:
    """The module an `importlib.import_module(...)`/`__import__(...)` call names, or None.

    A constant string is the name; an f-string gives its text up to the first placeholder
    (`f"isometry.cli.{name}"` -> "isometry.cli"); anything else is refused, so that no
    import can pass unread.
    """
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in DYNAMIC_IMPORTS:
        return None
    arg = node.args[0] if node.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return arg.values[0].value.rstrip(".")
    raise AssertionError(f"line {node.lineno}: {name}(...) of a name the house rules cannot read; "
                         f"use a string constant or an f-string that starts with the package")


def _imports(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `module` imports (resolved to the deepest known module)."""
    return {dep for dep, _ in _import_sites(module, path, known)}


def _import_sites(module: str, path: pathlib.Path, known: set[str]) -> set[tuple[str, int]]:
    """(imported package module, line) for every import of `module`, dynamic ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        names = []
        if module == "isometry":  # the lazy facade: its imports are the values of its tables
            if isinstance(node, ast.Dict):
                names = [v.value for v in node.values if isinstance(v, ast.Constant)]
            elif isinstance(node, ast.Call):
                continue
        dynamic = None if module == "isometry" else _dynamic_import(node)
        if dynamic is not None:
            names = [dynamic]
        elif isinstance(node, ast.Import):
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
                out.add((name, node.lineno))
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


# The CLI's commands import what they run inside the function that runs it, so that `--help`
# and argument errors answer without loading jax (tests/test_cli_errors.py). Every such
# import is listed here, by module: (function, imported name).
LAZY_IMPORTS = {
    "isometry.cli": {("build_parser", "isometry.cli")},
    "isometry.cli._devices": {("_start_processes", "jax"), ("mesh_from_args", "jax"),
                              ("mesh_from_args", "isometry")},
    "isometry.cli._engine_args": {("engine_from_args", "isometry.spectrum._engine")},
    "isometry.cli._report": {("report", "isometry.plot")},
    "isometry.cli._theory_config": {("sample", "isometry.experiments._sampling")},
    "isometry.cli.diagnose": {
        ("compute", "jax"), ("compute", "flax"), ("compute", "models"),
        ("compute", "isometry.theory"), ("compute", "isometry.diagnosis._diagnose"),
        ("compute", "isometry.cli._zoo"), ("_run_model", "isometry.data"),
        ("_run_model", "isometry.cli._zoo"), ("run_diagnosis", "jax"),
        ("run_diagnosis", "isometry.diagnosis._run"), ("run_diagnosis", "isometry.train"),
        ("run", "jax")},
    "isometry.cli.plot": {("run", "isometry.plot"), ("run", "isometry.train._tracking")},
    "isometry.cli.reproduce": {("run", "isometry.experiments"),
                               ("run", "isometry.train._tracking"), ("run", "isometry.train")},
    "isometry.cli.spectrum": {
        ("compute_timed", "jax"), ("compute_timed", "isometry"), ("compute_timed", "models"),
        ("compute_timed", "isometry.cli._zoo"), ("_progress", "tqdm"), ("_build", "models"),
        ("_build", "isometry.cli._zoo"), ("_spectrum", "jax"), ("_spectrum", "isometry"),
        ("_spectrum", "models"), ("_spectrum", "isometry.linalg._jacobian"),
        ("_matrix_free_fields", "numpy"), ("_matrix_free_fields", "isometry.train._tracking"),
        ("compute_layerwise", "jax"), ("compute_layerwise", "flax"),
        ("compute_layerwise", "isometry"), ("compute_layerwise", "isometry.cli._zoo"),
        ("_layerwise_records", "isometry"), ("_mean_summary", "numpy"), ("run", "jax"),
        ("run", "isometry.plot"), ("run", "isometry")},
    "isometry.cli.theory": {("compute", "isometry.theory"), ("run", "isometry.plot"),
                            ("run", "isometry.cli._theory_rezero")},
    "isometry.cli.toy": {("settings", "isometry.experiments.fig2"),
                         ("settings", "isometry.experiments.toy_depth"), ("run", "isometry.plot"),
                         ("run", "isometry.experiments.fig2"),
                         ("run", "isometry.experiments.toy_depth")},
    "isometry.cli.train": {("_train_config", "isometry.train"), ("_build_model", "isometry.cli._zoo"),
                           ("run", "jax"), ("run", "isometry.cli._zoo"),
                           ("run", "isometry.train._tracking"), ("run", "isometry.train")},
    "isometry.experiments": {("experiment", "isometry.experiments")},
}


def _function_imports(path: pathlib.Path) -> set[tuple[str, str]]:
    """(function, imported module) for every import inside a function of `path`.

    The facade's `importlib.import_module` of its own tables is its design (PEP 562), not a
    hidden edge: `_import_sites` reads those tables.
    """
    out = set()
    facade = path == ROOT / "isometry" / "__init__.py"
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for n in ast.walk(fn):
            dynamic = None if facade else _dynamic_import(n)
            if dynamic is not None:
                out.add((fn.name, dynamic))
            elif isinstance(n, ast.Import):
                out |= {(fn.name, a.name.split(".")[0] if not a.name.startswith(PACKAGES)
                         else a.name) for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                subs = [f"{base}.{a.name}" for a in n.names]
                mods = [x for x in subs if x in _sources()] or [base]
                out |= {(fn.name, m if m.startswith(PACKAGES) else m.split(".")[0]) for m in mods}
    return out


def test_imports_at_module_top():
    """Imports inside functions hide the dependency graph: only those of `LAZY_IMPORTS` may be there."""
    hidden = []
    for module, path in _sources().items():
        extra = _function_imports(path) - LAZY_IMPORTS.get(module, set())
        hidden += [f"{module}.{fn}: {dep}" for fn, dep in sorted(extra)]
    assert not hidden, "imports inside functions (move to the top, or list in LAZY_IMPORTS):\n" \
        + "\n".join(hidden)


def test_lazy_import_table_has_no_stale_rows():
    stale = [f"{m}: {row}" for m, rows in LAZY_IMPORTS.items()
             for row in sorted(rows - _function_imports(_sources()[m]))]
    assert not stale, "\n".join(stale)


def test_every_layer_name_matches_a_module():
    modules = set(_sources())
    dead = [k for k in LAYERS if not any(m == k or m.startswith(k + ".") for m in modules)]
    assert not dead, f"names in LAYERS that match no module (remove them): {dead}"


def test_layers_match_on_module_boundaries():
    assert _layer("isometry.toy") == LAYERS["isometry.toy"]
    assert _layer("isometry.toys") is None
    assert _layer("isometry.spectrum._lanczos") == LAYERS["isometry.spectrum"]


def test_dynamic_imports_are_read(tmp_path):
    """An `import_module` call of a higher layer is an edge like any import."""
    path = tmp_path / "low.py"
    path.write_text("import importlib\n\n\ndef f(name):\n"
                    "    importlib.import_module('isometry.cli')\n"
                    "    return __import__(f'isometry.diagnosis.{name}')\n")
    deps = _imports("isometry._io", path, set(_sources()))
    assert {"isometry.cli", "isometry.diagnosis"} <= deps
    path.write_text("import importlib\nimportlib.import_module(NAME)\n")
    with pytest.raises(AssertionError, match="cannot read"):
        _imports("isometry._io", path, set(_sources()))


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
