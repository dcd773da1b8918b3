"""isometry.plot is layer 1: its modules import only from the base layer and from itself."""

import ast
import pathlib

import isometry.plot

ALLOWED = ("isometry._io", "isometry._numerics", "isometry.plot")


def test_plot_imports_only_lower_layers():
    root = pathlib.Path(isometry.plot.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name == "isometry" or name.startswith("isometry."):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"


def test_toy_model_imports_no_plot_or_experiment():
    import isometry.toy

    tree = ast.parse(pathlib.Path(isometry.toy.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [n for n in names if n.startswith(("isometry.plot", "isometry.experiments"))]
    assert "isometry" not in names  # `from isometry import plot` would hide here
