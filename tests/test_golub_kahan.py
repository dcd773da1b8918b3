"""Golub–Kahan (`isometry.linalg._golub_kahan`, `_ritz`): one recurrence, b vectors a step.

Everything in float64 (conftest): single-vector and block runs are one code path (the block
size an argument) and give the numbers the two implementations gave before they were merged
(`tests/data/golub_kahan_reference.npz`, written by `tests/golub_kahan_reference.py`, at
1e-12); the relations J V = U B and Jᵀ U = V Bᵀ + V_{s+1} C_sᵀ E_sᵀ to 1e-10, restarts on rank
deficiency, the stopping rule against the fewest vectors, and the choice of the block size
(`auto_block_size`, on the dispatcher's side). Every step count is in vectors. The
single-vector relations, restarts and stopping rule are also checked in `test_lanczos.py`.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
import golub_kahan_reference
from isometry.linalg._golub_kahan import Bidiagonalization, certified_run, golub_kahan
from isometry.linalg._jacobian import jacobian_operator
from isometry.spectrum._lanczos import MIN_BLOCK_STEPS, auto_block_size, product_intensity
from helpers import KNOWN_SPECTRA, N_KNOWN, fewest_columns, known_operator, known_spectrum_map

F64_RTOL = 1e-10


def assert_block_relations(bd, matrix, tol=F64_RTOL):
    """J V = U B, Jᵀ U = V Bᵀ + V_{s+1} C_sᵀ E_sᵀ, U and [V, V_{s+1}] orthonormal."""
    b = bd.block_size
    n = int(bd.steps)
    v, u, bm = bd.right_vectors[:n].T, bd.left_vectors[:n].T, bd.matrix()[:n, :n]
    scale = float(jnp.linalg.norm(matrix, 2))
    np.testing.assert_allclose(matrix @ v, u @ bm, atol=tol * scale)
    coupling = bd.superdiagonal[n // b - 1]
    residual = bd.next_vectors.T @ coupling.T @ jnp.eye(n)[-b:]
    np.testing.assert_allclose(matrix.T @ u, v @ bm.T + residual, atol=tol * scale)
    vv = jnp.concatenate([v, bd.next_vectors.T], axis=1)
    np.testing.assert_allclose(vv.T @ vv, jnp.eye(n + b), atol=tol)
    np.testing.assert_allclose(u.T @ u, jnp.eye(n), atol=tol)


@pytest.fixture(scope="module")
def reference_values():
    return golub_kahan_reference.compute()


@pytest.mark.parametrize("name", sorted(np.load(golub_kahan_reference.PATH).files))
def test_values_of_the_code_before_the_merge(reference_values, name):
    # single-vector runs (fixed, stopped, breaking down, a vmapped batch of probes), certified
    # runs with b = 1, 4, 5 and fixed block runs: as the two implementations computed them
    saved = np.load(golub_kahan_reference.PATH)[name]
    scale = max(1.0, float(np.abs(saved).max(initial=0.0)))
    np.testing.assert_allclose(reference_values[name], saved, rtol=1e-12, atol=1e-12 * scale)


def test_single_vector_and_block_runs_are_one_code_path():
    assert importlib.util.find_spec("isometry.linalg._golub_kahan_block") is None
    _, matrix, op = known_operator("clustered")
    v0 = jax.random.normal(jax.random.key(2), (4, N_KNOWN))
    runs = {b: golub_kahan(op, v0[:b], 40, jax.random.key(3), block_size=b) for b in (1, 4)}
    for b, bd in runs.items():  # one result type, steps in vectors, the block size an argument
        assert type(bd) is Bidiagonalization and bd.block_size == b and int(bd.steps) == 40
        assert bd.diagonal.shape == bd.superdiagonal.shape == (40 // b, b, b)
        assert_block_relations(bd, matrix)
    single = runs[1]
    np.testing.assert_array_equal(single.alphas, single.diagonal[:, 0, 0])
    np.testing.assert_array_equal(single.betas, single.superdiagonal[:, 0, 0])
    # a start vector is a block of one: the same run, bit for bit
    same = golub_kahan(op, v0[0], 40, jax.random.key(3))
    np.testing.assert_array_equal(same.diagonal, single.diagonal)
    # the certified run: one function for both, the stopping rule counting vectors
    for b in (1, 4):
        out, theta, _, bounds, _ = certified_run(op, v0[:b], 200, jax.random.key(3), 5, 1e-8,
                                                 block_size=b)
        assert int(out.steps) % b == 0 and 5 < int(out.steps) < 200
        assert bool(jnp.all(bounds <= 1e-8 * theta))
    with pytest.raises(ValueError, match="blocks of 4"):
        runs[4].alphas
    with pytest.raises(ValueError, match="block_size"):
        golub_kahan(op, v0, 40, jax.random.key(3), block_size=2)


@pytest.mark.parametrize("name", sorted(KNOWN_SPECTRA))
def test_block_relations_on_prescribed_spectra(name):
    s, matrix, op = known_operator(name)
    v0 = jax.random.normal(jax.random.key(2), (4, N_KNOWN))
    bd = jax.jit(lambda v: golub_kahan(op, v, 120, jax.random.key(3), block_size=4))(v0)
    assert int(bd.steps) == 120
    assert_block_relations(bd, matrix)
    # and after an early stop; the top values meet the tolerance asked
    bd = jax.jit(lambda v: golub_kahan(op, v, 240, jax.random.key(3), block_size=4, k=5,
                                       rtol=1e-8))(v0)
    assert 8 < int(bd.steps) < 240
    assert_block_relations(bd, matrix)
    theta = np.asarray(bd.ritz()[1][:5])
    assert np.max((np.asarray(s[:5]) - theta) / s[:5]) <= 1e-8


def test_restart_when_the_block_is_wider_than_the_rank():
    # rank J = 3 < b = 4: J V_1 has rank 3, so one column of U_1 is a restart (A_1 has rank
    # 3) and every later block lies in the null spaces (A_j = 0).
    s = jnp.array([3.0, 2.0, 1.0])
    fn, matrix = known_spectrum_map(jax.random.key(4), s, 30, 30)
    op = jacobian_operator(fn, jnp.ones(30))
    v0 = jax.random.normal(jax.random.key(5), (4, 30))
    bd = jax.jit(lambda v: golub_kahan(op, v, 12, jax.random.key(5), block_size=4))(v0)
    sv_a = jnp.linalg.svd(bd.diagonal[0], compute_uv=False)
    assert float(sv_a[2]) > 1e-6 and float(sv_a[3]) < 1e-12
    assert float(jnp.max(jnp.abs(bd.diagonal[1:]))) < 1e-12
    assert_block_relations(bd, matrix)
    sv = bd.ritz()[1]
    np.testing.assert_allclose(sv[:3], s, rtol=F64_RTOL)
    np.testing.assert_allclose(sv[3:], 0.0, atol=1e-12)


def fewest_vectors(op, s, v0, k, rtol, max_steps):
    """The fewest vectors (whole blocks) whose top-k Ritz values are within rtol of the truth."""
    b = v0.shape[0]
    bm = golub_kahan(op, v0, max_steps, jax.random.key(3), block_size=b).matrix()
    return fewest_columns(bm, s, k, rtol, range(b * (-(-(k + 1) // b)), max_steps // b * b + 1, b))


@pytest.mark.parametrize("rtol", [1e-6, 1e-8])
@pytest.mark.parametrize("name", sorted(KNOWN_SPECTRA))
def test_block_stopping_rule_takes_within_10_percent_and_a_block_of_the_fewest(name, rtol):
    # blocks of 5 (the default for these memory-bound operators at max_steps = 320)
    s, _, op = known_operator(name)
    s = np.asarray(s)
    b = auto_block_size(op, 320)
    assert b == 5
    v0 = jax.random.normal(jax.random.key(2), (b, N_KNOWN))
    need = fewest_vectors(op, s, v0, 10, rtol, 250)
    out, theta, _, bounds, _ = jax.jit(
        lambda v: certified_run(op, v, 250, jax.random.key(3), 10, rtol, block_size=b))(v0)
    vectors = int(out.steps)
    assert need <= vectors <= 1.1 * need + b, (need, vectors)
    assert np.max((s[:10] - np.asarray(theta)) / s[:10]) <= rtol
    assert bool(jnp.all(bounds <= rtol * theta))


def test_the_block_size_follows_the_cost_of_a_product():
    # a dense layer reads its weights once per product (0.5 flop per byte): blocks
    w = jax.random.normal(jax.random.key(0), (64, 64))
    dense = jacobian_operator(lambda x: jnp.tanh(w @ x), jnp.ones(64))
    assert product_intensity(dense) == pytest.approx(2 * 64 * 64 / (8 * 64 * 64), rel=0.05)
    assert auto_block_size(dense, 256) == 4 and auto_block_size(dense, 512) == 8
    # the same weights shared by 64 tokens: 64 times the flops per byte, one vector per step
    tokens = jacobian_operator(lambda x: x @ w.T, jnp.ones((64, 64)))
    assert product_intensity(tokens) == pytest.approx(16.0, rel=0.05)
    assert auto_block_size(tokens, 256) == 1
    # a block run leaves at least MIN_BLOCK_STEPS steps, and its size divides max_steps
    assert auto_block_size(dense, MIN_BLOCK_STEPS) == 1
    assert auto_block_size(dense, 200) == 3 - 1  # 200 // 64 = 3, the largest divisor ≤ 3: 2


def test_top_singular_values_by_blocks_is_certified_and_vmappable():
    s = KNOWN_SPECTRA["clustered"]
    fn, _ = known_spectrum_map(jax.random.key(1), s, N_KNOWN, N_KNOWN)
    top = jax.jit(lambda x: iso.top_singular_values(fn, x, k=10, rtol=1e-8))(jnp.ones(N_KNOWN))
    assert int(top.steps) % 4 == 0 and bool(top.converged)  # the default: blocks of 4
    np.testing.assert_allclose(top.singular_values, s[:10], rtol=1e-8)
    assert bool(jnp.all(s[:10] - top.singular_values <= top.error_bounds + 1e-14))
    w = jax.random.normal(jax.random.key(0), (60, 60)) / jnp.sqrt(60.0)
    batched = jax.jit(jax.vmap(lambda x: iso.top_singular_values(
        lambda z: jnp.tanh(w @ z), x, k=3, rtol=1e-10, max_steps=60, block_size=4)))
    xs = jax.random.normal(jax.random.key(1), (3, 60))
    top = batched(xs)
    dense = iso.jacobian_spectrum(lambda z: jnp.tanh(w @ z), xs, batched=True)
    np.testing.assert_allclose(top.singular_values, dense.singular_values[:, :3], rtol=1e-9)
    assert bool(jnp.all(top.converged)) and top.steps.shape == (3,)
    with pytest.raises(ValueError, match="block_size"):
        iso.top_singular_values(lambda z: z, jnp.ones(8), k=2, block_size=9)


def test_key_none_is_key_zero_and_key_is_a_keyword_everywhere():
    w = jnp.diag(jnp.linspace(2.0, 0.5, 16))
    fn, x, zero = (lambda z: w @ z), jnp.ones(16), jax.random.key(0)
    options = dict(k=2, num_probes=2, num_steps=6, chi_probes=2)
    lz, chi, top = iso.lanczos_spectrum, iso.hutchinson_chi, iso.top_singular_values
    for default, by_keyword, positional in (
            (lz(fn, x, **options), lz(fn, x, key=zero, **options), lz(fn, x, zero, **options)),
            (chi(fn, x), chi(fn, x, key=zero), chi(fn, x, zero, 16)),
            (top(fn, x, 2, 1e-6), top(fn, x, 2, 1e-6, key=zero), top(fn, x, k=2, key=zero))):
        for other in (by_keyword, positional):
            for a, b in zip(jax.tree_util.tree_leaves(default), jax.tree_util.tree_leaves(other)):
                np.testing.assert_array_equal(a, b)
