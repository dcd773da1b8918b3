"""Engine settings: validated where they are written, honoured by every layer that takes them.

A table of typos and bad values through the API and the command line: each fails at
construction (before anything is traced) with one line naming the setting; none is accepted.
Then the memory budget: every engine raises its budget error with the budget the caller passed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
from isometry.linalg._memory import JacobianTooLargeError

# (case, constructor, the error type, a fragment the one-line message must hold)
API_CASES = [
    ("typo", lambda: iso.lanczos(blok_size=4), TypeError, "'blok_size' (did you mean block_size?)"),
    ("typo-dense", lambda: iso.dense(chunksize=4), TypeError, "did you mean chunk_size"),
    ("typo-auto", lambda: iso.auto(max_dim=10), TypeError, "'max_dim'"),
    ("typo-shorthand", lambda: iso.spectrum_fn(lambda p, x: x, "auto", blok_size=4),
     TypeError, "did you mean block_size"),
    ("typo-jacobian_spectrum", lambda: iso.jacobian_spectrum(jnp.sin, jnp.ones(3), chunk=2),
     TypeError, "'chunk'"),
    ("k-zero", lambda: iso.lanczos(k=0), ValueError, "k must be"),
    ("k-float", lambda: iso.lanczos(k=2.5), ValueError, "k must be an integer"),
    ("k-above-steps", lambda: iso.lanczos(k=300), ValueError, "k must be at most max_steps"),
    ("negative-probes", lambda: iso.lanczos(num_probes=-1), ValueError, "num_probes"),
    ("negative-chi-probes", lambda: iso.lanczos(chi_probes=-2), ValueError, "chi_probes"),
    ("rtol-one", lambda: iso.lanczos(rtol=1.0), ValueError, "rtol must be in (0, 1)"),
    ("rtol-string", lambda: iso.lanczos(rtol="1e-6"), ValueError, "rtol"),
    ("block-not-dividing", lambda: iso.lanczos(max_steps=30, block_size=4), ValueError,
     "block_size must divide max_steps"),
    ("bandwidth-zero", lambda: iso.lanczos(bandwidth=0.0), ValueError, "bandwidth"),
    ("top_run-int", lambda: iso.lanczos(top_run=1), ValueError, "top_run must be True or False"),
    ("no-top-run-one-probe", lambda: iso.lanczos(top_run=False, num_probes=1, chi_probes=0),
     ValueError, "num_probes + chi_probes"),
    ("mode", lambda: iso.dense(mode="forward"), ValueError, "mode must be one of"),
    ("chunk-zero", lambda: iso.dense(chunk_size=0), ValueError, "chunk_size"),
    ("budget-negative", lambda: iso.dense(memory_budget=-1), ValueError, "memory_budget"),
    ("auto-wrong-part", lambda: iso.auto(dense=iso.lanczos()), TypeError, "auto's dense"),
    ("method-unknown", lambda: iso.spectrum_fn(lambda p, x: x, "svd"), ValueError, "unknown method"),
    ("engine-and-settings", lambda: iso.spectrum_fn(lambda p, x: x, engine=iso.dense(), k=3),
     TypeError, "pass settings to the engine object"),
    ("tracker-typo", lambda: iso.Tracker("unused", method="lanzcos"), ValueError, "unknown method"),
    ("diagnose-matrix-free", lambda: iso.diagnose(lambda p, x: x, None, jnp.ones(3),
                                                  engine=iso.lanczos()),
     TypeError, "dense engine's settings"),
    ("sharded-typo", lambda: iso.sharded_spectrum_fn(lambda p, x: x, "lanczos", num_prob=3),
     TypeError, "did you mean num_probes"),
]


@pytest.mark.parametrize("case, make, error, fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_a_bad_setting_fails_at_construction_in_one_line(case, make, error, fragment):
    with pytest.raises(error) as info:
        make()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_the_table_is_at_least_fifteen_cases():
    assert len(API_CASES) + len(CLI_CASES) >= 15


def test_settings_are_frozen_hashable_and_plain_data():
    engine = iso.lanczos(k=3, rtol=1e-8)
    assert engine == iso.lanczos(k=3, rtol=1e-8) and hash(engine) == hash(iso.lanczos(k=3, rtol=1e-8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        engine.k = 4
    assert engine.to_dict()["engine"] == "lanczos" and engine.to_dict()["k"] == 3
    assert iso.auto().to_dict()["dense"]["engine"] == "dense"


def test_the_shorthand_is_the_engine_object():
    """`spectrum_fn(f, "lanczos", k=3)` computes what `spectrum_fn(f, engine=iso.lanczos(k=3))` does."""
    w = jnp.diag(jnp.linspace(2.0, 0.5, 16))
    x = jnp.ones(16)
    a = iso.spectrum_fn(lambda p, v: p @ v, "lanczos", k=3, num_probes=2)(w, x)
    b = iso.spectrum_fn(lambda p, v: p @ v, engine=iso.lanczos(k=3, num_probes=2))(w, x)
    np.testing.assert_array_equal(a.top_singular_values, b.top_singular_values)
    assert a.top_singular_values.shape == (3,)


def test_auto_picks_by_size():
    sfn = iso.spectrum_fn(lambda p, v: p * v, engine=iso.auto(max_dense_dim=4))
    assert sfn(jnp.ones(3), jnp.ones(3)).engine == "dense"
    assert sfn(jnp.ones(16), jnp.ones(16)).engine == "lanczos"


# --- the memory budget ----------------------------------------------------------------------

def _budget_error(make_and_run) -> str:
    with pytest.raises(JacobianTooLargeError) as info:
        make_and_run()
    return str(info.value)


def test_every_engine_raises_the_budget_the_caller_passed():
    """1 KiB is far below what any of these needs: each message names 1 KiB, no default."""
    budget = 2**10
    shown = "above the memory budget of 0.00 GiB"  # 1 KiB at two decimals
    w = jax.random.normal(jax.random.key(0), (64, 64))
    x = jnp.ones(64)
    apply_fn = lambda p, v: jnp.tanh(p @ v)  # noqa: E731
    states_fn = lambda p, v: jnp.stack([v, jnp.tanh(p @ v)])  # noqa: E731
    runs = {
        "dense": lambda: iso.spectrum_fn(apply_fn, engine=iso.dense(memory_budget=budget))(w, x),
        "lanczos": lambda: iso.spectrum_fn(apply_fn, engine=iso.lanczos(
            k=2, memory_budget=budget))(w, x),
        "jacobian_spectrum": lambda: iso.jacobian_spectrum(jnp.tanh, x, memory_budget=budget),
        "dense_jacobian": lambda: iso.dense_jacobian(jnp.tanh, x, memory_budget=budget),
        "layerwise": lambda: iso.layerwise_spectrum_fn(states_fn, memory_budget=budget)(w, x),
        "sharded": lambda: iso.sharded_spectrum_fn(apply_fn, engine=iso.dense(
            memory_budget=budget))(w, x[None]),
    }
    for name, run in runs.items():
        message = _budget_error(run)
        assert shown in message, f"{name}: {message}"


def test_one_default_budget():
    from isometry.linalg._memory import DEFAULT_MEMORY_BUDGET, memory_budget_of
    assert memory_budget_of(None) == DEFAULT_MEMORY_BUDGET == iso.DEFAULT_MEMORY_BUDGET
    for engine in (iso.dense(), iso.lanczos()):
        assert engine.memory_budget is None  # resolved by the one function, not a copy


# --- the command line -----------------------------------------------------------------------

CLI_CASES = [
    (["spectrum", "--method", "lanczos", "--k", "0"], "--k must be"),
    (["spectrum", "--method", "lanczos", "--rtol", "2"], "--rtol must be in (0, 1)"),
    (["spectrum", "--method", "lanczos", "--max-steps", "30", "--block-size", "4"],
     "--block-size must divide --max-steps = 30"),
    (["spectrum", "--method", "dense", "--k", "3"], "--k is a setting of the lanczos engine"),
    (["spectrum", "--method", "lanczos", "--chunk-size", "3"], "--chunk-size is a setting of the dense"),
    (["spectrum", "--memory-budget", "-1"], "--memory-budget must be a number of GiB > 0"),
    (["train", "--method", "lanczos", "--lanczos-probes", "0", "--steps", "1"],
     "--lanczos-probes must be in [1, inf)"),
]


@pytest.mark.parametrize("argv, fragment", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_the_command_line_refuses_a_bad_setting_in_one_line(argv, fragment, tmp_path):
    extra = ["--out", str(tmp_path / "out")] if argv[0] == "spectrum" else \
        ["--run-dir", str(tmp_path / "run"), "--data", "synthetic"]
    proc = subprocess.run([sys.executable, "-m", "isometry", *argv, "--depth", "2", "--width", "4",
                           *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


# --- one kind of object from every factory --------------------------------------------------

def test_every_factory_returns_program_trace_count_and_compile():
    w = jax.random.normal(jax.random.key(0), (6, 6)) / 3
    x = jax.random.normal(jax.random.key(1), (6,))
    apply_fn = lambda p, v: jnp.tanh(p @ v)  # noqa: E731
    states_fn = lambda p, v: jnp.stack([v, jnp.tanh(p @ v), jnp.tanh(p @ jnp.tanh(p @ v))])  # noqa: E731
    cases = {
        "spectrum_fn": (iso.spectrum_fn(apply_fn, engine=iso.dense()), (w, x)),
        "sharded": (iso.sharded_spectrum_fn(apply_fn, engine=iso.dense()), (w, x[None])),
        "layerwise": (iso.layerwise_spectrum_fn(states_fn), (w, x)),
        "layerwise_chi": (iso.layerwise_chi_fn(states_fn, num_probes=4), (w, x)),
    }
    for name, (f, args) in cases.items():
        first = f(*args)
        assert f.trace_count == 1, name
        again = f(args[0] * 0.5, *args[1:])  # new values, same shapes: no new trace
        assert f.trace_count == 1, name
        run = f.compile(*args)
        np.testing.assert_allclose(jax.tree.leaves(run(*args))[0], jax.tree.leaves(first)[0],
                                   rtol=1e-12, err_msg=name)
        assert hasattr(f, "program") and callable(run) and again is not None


def test_layerwise_chi_key_is_optional_and_keyword():
    states_fn = lambda p, v: jnp.stack([v, p * v])  # noqa: E731
    cfn = iso.layerwise_chi_fn(states_fn, num_probes=4)
    a = cfn(2.0, jnp.ones(5))
    b = cfn(2.0, jnp.ones(5), key=jax.random.key(0))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[0], [1.0, 4.0], rtol=1e-12)  # J_1 = 2 I: chi = 4 exactly
