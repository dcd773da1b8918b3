"""The lazy facade `isometry/__init__.py`: every public name importable, nothing heavy loaded."""

import json
import subprocess
import sys

import pytest

import isometry

HEAVY = ("scipy", "matplotlib", "optax", "flax")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_isometry_loads_no_heavy_dependency():
    assert _loaded_after("import isometry") == []


def test_cli_help_loads_no_heavy_dependency():
    code = ("import contextlib, io\nfrom isometry.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert _loaded_after(code) == []


@pytest.mark.parametrize("name", isometry.__all__)
def test_every_public_name_imports(name):
    namespace = {}
    exec(f"from isometry import {name}", namespace)
    assert namespace[name] is getattr(isometry, name)  # one object, however it is reached
    assert name in dir(isometry)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        isometry.nope  # noqa: B018


def test_train_is_the_module_with_the_loop():
    import isometry.train._loop

    assert isometry.train.train is isometry.train._loop.train
    assert isometry.TrainConfig is isometry.train.TrainConfig


def test_submodules_are_attributes_on_first_use():
    code = "import isometry as iso\nassert iso._io.json_text([1.0]) == '[1.0]'\nassert iso.plot"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
