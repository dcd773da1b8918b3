"""`isometry spectrum`: the table, the JSON records, the PNG, and one-line argument errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isometry.cli import main


def test_spectrum_command_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["spectrum", "--depth", "3,6", "--width", "12", "--samples", "2", "--x64",
                 "--out", str(out), "--json"])
    assert code == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)["records"]  # the same document as spectra.json
    assert len(records) == 12  # 6 variants × 2 depths
    assert {r["variant"] for r in records} == {"plain", "residual", "norm", "prenorm", "postnorm",
                                               "rezero"}
    assert "variant" in captured.err and "rezero" in captured.err  # the table went to stderr
    for r in records:
        assert len(r["singular_values"]) == 2 and len(r["singular_values"][0]) == 12
        s = np.asarray(r["singular_values"])
        np.testing.assert_allclose(r["chi"], np.mean(np.sum(s**2, axis=1) / 12), rtol=1e-10)
        assert r["engine"] == "dense" and 0.0 <= r["zero_share"] < 1.0
        if r["variant"] == "rezero":
            assert r["chi"] == 1.0 and r["sigma_min"] == 1.0 and r["isometry_share"] == 1.0
    saved = json.loads((out / "spectra.json").read_text())
    assert saved["records"] == records
    assert (out / "spectra.png").stat().st_size > 10_000


def test_table_on_stdout_without_json(tmp_path, capsys):
    assert main(["spectrum", "--variant", "rezero,plain", "--depth", "2", "--width", "8",
                 "--samples", "1", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "variant", "depth"]
    assert [line.split()[1] for line in lines[1:]] == ["rezero", "plain"]


@pytest.mark.parametrize("args,message", [
    (["--variant", "resnet"], "unknown fc variant(s) resnet"),
    (["--depth", "four"], "argument --depth: expected a comma-separated list of int"),
    (["--samples", "0"], "--samples must be at least 1"),
    (["--method", "exact"], "argument --method: invalid choice: 'exact'"),
])
def test_bad_arguments_are_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    try:
        code = main(["spectrum", "--out", str(tmp_path), *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and message in err_lines[0], err_lines


def test_the_command_as_typed_exits_2_on_a_bad_variant(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "isometry", "spectrum", "--variant", "resnet",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("isometry spectrum: error: unknown fc variant(s) resnet; choose "
                                   "from plain, residual, norm, prenorm, postnorm, rezero")


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "isometry"]
    assert ep.value == "isometry.cli:main"


def test_fc_variants_share_one_compiled_program_and_json_reports_timing(tmp_path, capsys):
    code = main(["spectrum", "--variant", "plain,residual,norm,prenorm,postnorm,rezero",
                 "--depth", "3", "--width", "8", "--samples", "2", "--x64", "--out",
                 str(tmp_path), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    timing = doc["timing"]
    assert timing["compilations"] == 1  # six variants of one shape: one program
    compiled = [r["timing"]["compiled"] for r in doc["records"]]
    assert compiled == [1, 0, 0, 0, 0, 0]
    assert doc["records"][0]["timing"]["compile_s"] > 0  # the one compilation took time
    assert all(r["timing"]["compile_s"] == 0.0 for r in doc["records"][1:])
    for name in ("compile_s", "compute_s"):  # the run's totals are its records' sums
        assert timing[name] == pytest.approx(sum(r["timing"][name] for r in doc["records"]))
    assert timing["compilations"] == sum(compiled)
    assert all(r["timing"]["compute_s"] > 0 for r in doc["records"])


def test_a_new_depth_compiles_a_new_program(tmp_path, capsys):
    assert main(["spectrum", "--variant", "plain,rezero", "--depth", "2,3", "--width", "6",
                 "--samples", "1", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timing"]["compilations"] == 2


@pytest.mark.parametrize("variant", ["plain", "residual", "norm", "prenorm", "postnorm", "rezero"])
def test_fc_variants_as_data_equal_the_models(variant):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import models

    alpha_init = 0.3 if variant == "rezero" else 0.0  # the other variants have no α to set
    net = models.FullyConnected(4, 16, variant=variant, alpha_init=alpha_init, rngs=nnx.Rngs(0))
    state = nnx.state(net)  # generic norm parameters (not 1 and 0)
    nnx.update(net, jax.tree_util.tree_map(
        lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), state))
    x = jax.random.normal(jax.random.key(1), (3, 16), jnp.float32)
    y = jax.vmap(lambda z: models.fc_blocks_apply_fn("relu")(models.fc_blocks_as_data(net), z))(x)
    np.testing.assert_allclose(y, net(x), rtol=1e-5, atol=1e-6)


def test_compilation_cache_folder_from_the_environment(tmp_path):
    from isometry.cli import use_compilation_cache

    env = {"ISOMETRY_COMPILATION_CACHE": str(tmp_path / "c")}
    assert use_compilation_cache(env) == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "c")
    assert use_compilation_cache({"ISOMETRY_COMPILATION_CACHE": "off"}) is None
    own = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}  # jax's own setting wins
    assert use_compilation_cache(own) == str(tmp_path / "jax")


def test_a_second_run_loads_the_programs_the_first_compiled(tmp_path):
    """`isometry spectrum --method lanczos` twice with one cache folder: the first run stores
    the spectrum's program, the second finds it there (it stores no new one)."""
    cache = tmp_path / "cache"
    env = dict(os.environ, ISOMETRY_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "isometry", "spectrum", "--method", "lanczos", "--depth", "3",
           "--width", "12", "--samples", "1", "--out", str(tmp_path / "out")]
    entries = []
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        entries.append(sorted(p.name for p in cache.iterdir() if p.name.startswith("jit__core")))
    assert len(entries[0]) == 1 and entries[1] == entries[0]
