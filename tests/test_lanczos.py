"""Matrix-free spectra (`isometry.spectrum._lanczos`) against known spectra and the dense engine.

The accuracy tests of issue 5 run at d ≈ 2,000: a fully connected net (d = 2,000) and
`models.Transformer` (32 tokens × 64 = 2,048 inputs): top-10 σ
within 1e-4 relative, chi within 2 %, total-variation distance of the 50-bin log10-σ
histograms below 0.1. Everything in float64 (conftest).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry import plot
from isometry.spectrum._lanczos import golub_kahan, hutchinson_chi, lanczos_spectrum
from isometry.linalg._jacobian import jacobian_operator
from helpers import (KNOWN_SPECTRA, N_KNOWN, count_traces, fewest_columns, known_operator,
                     known_spectrum_map)

F64_RTOL = 1e-10


def jitted_lanczos(fn, x, key, **options):
    """`lanczos_spectrum` compiled as a whole (eager dispatch of its loops is slower)."""
    return jax.jit(lambda x, key: lanczos_spectrum(fn, x, key, **options))(x, key)


def tv_distance(dense, matrix_free, bins=50) -> float:
    """Total variation between the two log10-σ histograms on the dense spectrum's bins."""
    p, edges = dense.histogram(bins)
    q, _ = matrix_free.histogram(edges)
    return 0.5 * float(np.sum(np.abs(p - q) * np.diff(edges)))


def assert_matches_dense(apply_fn, params, x, key=jax.random.key(7)):
    dense = iso.spectrum_fn(apply_fn, "dense")(params, x)
    spec = iso.spectrum_fn(apply_fn, "lanczos")(params, x, key)
    top = np.asarray(dense.singular_values[:10])
    np.testing.assert_allclose(spec.top_singular_values, top, rtol=1e-4)
    assert bool(jnp.all(spec.relative_error_bounds <= 1e-4))  # the bounds certify the check
    # chi: the deflated Hutchinson estimate is unbiased; 2 % and 5 standard errors.
    assert abs(float(spec.chi) / float(dense.chi) - 1) < 0.02
    assert abs(float(spec.chi - dense.chi)) < 5 * float(spec.chi_stderr) + 1e-12
    assert tv_distance(dense, spec) < 0.1
    # σ_min is an upper bound (up to round-off); mean log σ from the density is close.
    assert float(spec.sigma_min) >= float(dense.sigma_min) * (1 - 1e-8)
    assert abs(float(spec.mean_log - dense.mean_log)) < 0.05 * float(dense.std_log) + 0.01
    return dense, spec


def test_exact_when_the_krylov_space_is_complete():
    s = jnp.array([5.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.2])
    fn, matrix = known_spectrum_map(jax.random.key(0), s, 8, 8)
    spec = jitted_lanczos(fn, jnp.ones(8), jax.random.key(1), k=8, num_steps=8, max_steps=8)
    np.testing.assert_allclose(spec.top_singular_values, s, rtol=F64_RTOL)
    np.testing.assert_allclose(spec.sigma_min, 0.2, rtol=F64_RTOL)
    np.testing.assert_allclose(spec.nodes, jnp.broadcast_to(s, spec.nodes.shape), rtol=1e-8)
    np.testing.assert_allclose(jnp.sum(spec.weights, axis=-1), 1.0, rtol=F64_RTOL)
    # ‖J‖_F² = ‖B‖_F² exactly once V spans everything: the Hutchinson remainder vanishes.
    np.testing.assert_allclose(spec.chi, jnp.sum(s**2) / 8, rtol=1e-8)


def test_bidiagonalization_reproduces_the_matrix():
    fn, matrix = known_spectrum_map(jax.random.key(2), jnp.linspace(3.0, 0.1, 30), 40, 30)
    op = jacobian_operator(fn, jnp.ones(40))
    bd = golub_kahan(op, jnp.ones(40), 12, jax.random.key(3))
    # B = Uᵀ J V with V from the run: check J V = U B through the singular values of J V.
    jv = matrix @ bd.right_vectors.T
    np.testing.assert_allclose(jnp.linalg.svd(jv, compute_uv=False),
                               jnp.linalg.svd(bd.matrix(), compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(bd.right_vectors @ bd.right_vectors.T, jnp.eye(12), atol=1e-12)


def test_breakdown_on_the_identity_and_rectangular_jacobians():
    # J = I: every β is 0 (invariant subspaces); restarts keep the run finite and exact.
    spec = jitted_lanczos(lambda x: 1.0 * x, jnp.arange(1.0, 41.0), jax.random.key(0), k=5,
                          num_steps=10, max_steps=20)
    np.testing.assert_allclose(spec.top_singular_values, 1.0, rtol=F64_RTOL)
    assert abs(float(spec.chi) - 1.0) < 5 * float(spec.chi_stderr)
    assert int(spec.n_nonfinite) == 0
    # Wide J (n_out < n_in): the short side JJᵀ is used; σ exact, chi still over n_in.
    s = jnp.linspace(2.0, 0.5, 20)
    fn, matrix = known_spectrum_map(jax.random.key(5), s, 50, 20)
    spec = jitted_lanczos(fn, jnp.ones(50), jax.random.key(1), k=20, num_steps=20, max_steps=20)
    np.testing.assert_allclose(spec.top_singular_values, s, rtol=1e-8)
    np.testing.assert_allclose(spec.chi, jnp.sum(s**2) / 50, rtol=1e-8)
    assert (spec.n_in, spec.n_out) == (50, 20)


def test_hutchinson_chi_of_every_output_leaf():
    w = jax.random.normal(jax.random.key(0), (300, 300)) / jnp.sqrt(300.0)
    fn = lambda x: [x, jnp.tanh(w @ x), 2.0 * x]  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (300,))
    chi, err = hutchinson_chi(fn, x, jax.random.key(2), num_probes=32)
    np.testing.assert_allclose(chi[0], 1.0, rtol=F64_RTOL)  # Rademacher: ‖r‖² = n exactly
    np.testing.assert_allclose(chi[2], 4.0, rtol=F64_RTOL)
    exact = iso.jacobian_spectrum(lambda x: jnp.tanh(w @ x), x).chi
    assert abs(float(chi[1] - exact)) < 5 * float(err[1])
    assert float(err[1]) < 0.05 * float(exact)


def test_fully_connected_matches_dense_at_d2000():
    net = models.FullyConnected(4, 2000, variant="residual", activation="tanh",
                                param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(1), (2000,), jnp.float64)
    assert_matches_dense(apply_fn, params, x)


def test_transformer_matches_dense_at_d2048():
    net = models.Transformer(4, 64, heads=4, ffn=128, variant="rezero", alpha_init=0.5,
                             param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    net.eval()
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(1), (32, 64), jnp.float64)
    dense, spec = assert_matches_dense(apply_fn, params, x)
    # The statistics API works on the matrix-free result, including the histogram plot.
    assert set(spec.to_dict()) >= set(dense.to_dict()) and json.dumps(spec.to_dict(), allow_nan=False)
    plot.spectrum_histograms({"transformer": {"dense": dense, "lanczos": spec}})


def test_spectrum_fn_lanczos_is_jitted_batched_and_does_not_recompile():
    w = jax.random.normal(jax.random.key(0), (40, 40)) / jnp.sqrt(40.0)
    apply_fn = lambda p, x: jnp.tanh(p @ x)  # noqa: E731
    xs = jax.random.normal(jax.random.key(1), (3, 40))
    sfn = iso.spectrum_fn(apply_fn, "lanczos", batched=True, k=3, num_steps=12, max_steps=24,
                          num_probes=2, chi_probes=4)
    spec = sfn(w, xs, jax.random.key(2))
    assert spec.top_singular_values.shape == (3, 3) and spec.chi.shape == (3,)
    dense = iso.spectrum_fn(apply_fn, "dense", batched=True)(w, xs)
    np.testing.assert_allclose(spec.top_singular_values, dense.singular_values[:, :3], rtol=1e-6)
    sfn(2.0 * w, xs, jax.random.key(3))
    assert sfn.trace_count == 1


def test_auto_switches_to_lanczos_above_the_threshold():
    w = jax.random.normal(jax.random.key(0), (24, 24)) / jnp.sqrt(24.0)
    apply_fn = lambda p, x: jnp.tanh(p @ x)  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (24,))
    small = iso.spectrum_fn(apply_fn, "auto")(w, x)
    large = iso.spectrum_fn(apply_fn, "auto", auto_dense_max_dim=16, k=2, num_steps=8,
                            max_steps=24, num_probes=2, chi_probes=2)(w, x)
    assert isinstance(small, iso.Spectrum) and isinstance(large, iso.LanczosSpectrum)


def test_dense_request_that_does_not_fit_fails_fast_pointing_to_lanczos():
    sfn = iso.spectrum_fn(lambda p, x: x * p, "dense", memory_budget=1e6)
    with pytest.raises(iso.JacobianTooLargeError, match="lanczos"):
        sfn(2.0, jnp.ones(1000))


def test_nonfinite_jacobian_raises():
    # d√x/dx = ∞ at x = 0: J v is not finite.
    sfn = iso.spectrum_fn(lambda p, x: jnp.sqrt(x) * p, "lanczos", k=2, num_steps=4, max_steps=8,
                          num_probes=2, chi_probes=2)
    with pytest.raises(FloatingPointError):
        sfn(1.0, jnp.arange(8.0))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="k must be"):
        lanczos_spectrum(lambda x: x, jnp.ones(4), jax.random.key(0), k=10)
    with pytest.raises(ValueError, match="bandwidth"):
        lanczos_spectrum(lambda x: x, jnp.ones(4), jax.random.key(0), k=2, bandwidth=0.0)


# --- issue 19: the bidiagonalization, its stopping rule and top_singular_values -------------
def assert_bidiagonal_relations(bd, matrix, tol=F64_RTOL):
    """J V = U B and Jᵀ U = V Bᵀ + β_s v_{s+1} e_sᵀ, U and [V, v_{s+1}] orthonormal."""
    s = int(bd.steps)
    v, u, b = bd.right_vectors[:s].T, bd.left_vectors[:s].T, bd.matrix()[:s, :s]
    scale = float(jnp.linalg.norm(matrix, 2))
    np.testing.assert_allclose(matrix @ v, u @ b, atol=tol * scale)
    e_s = jnp.zeros(s).at[-1].set(1.0)
    residual = bd.betas[s - 1] * jnp.outer(bd.next_vector, e_s)
    np.testing.assert_allclose(matrix.T @ u, v @ b.T + residual, atol=tol * scale)
    vv = jnp.concatenate([v, bd.next_vector[:, None]], axis=1)
    np.testing.assert_allclose(vv.T @ vv, jnp.eye(s + 1), atol=tol)
    np.testing.assert_allclose(u.T @ u, jnp.eye(s), atol=tol)


@pytest.mark.parametrize("name", sorted(KNOWN_SPECTRA))
def test_bidiagonal_relations_on_prescribed_spectra(name):
    s, matrix, op = known_operator(name)
    v0 = jax.random.normal(jax.random.key(2), (N_KNOWN,))
    bd = jax.jit(lambda v: golub_kahan(op, v, 120, jax.random.key(3)))(v0)
    assert int(bd.steps) == 120
    assert_bidiagonal_relations(bd, matrix)
    # and after an early stop
    bd = jax.jit(lambda v: golub_kahan(op, v, 200, jax.random.key(3), k=5, rtol=1e-8))(v0)
    assert 5 < int(bd.steps) < 200
    assert_bidiagonal_relations(bd, matrix)


def test_restart_on_an_exact_breakdown_of_a_rank_three_operator():
    s = jnp.array([3.0, 2.0, 1.0])
    fn, matrix = known_spectrum_map(jax.random.key(4), s, 30, 30)
    op = jacobian_operator(fn, jnp.ones(30))
    bd = jax.jit(lambda v: golub_kahan(op, v, 8, jax.random.key(5)))(jnp.arange(1.0, 31.0))
    # u_1..u_3 span the range of J, so α_4 = ‖(I − U Uᵀ) J v_4‖ = 0 (v_4 carries the start's
    # component in the null space); the restarted u_4 ⟂ range J gives Jᵀ u_4 = 0, β_4 = 0, and
    # so on. Restarts keep the bases orthonormal and the relations exact.
    assert float(jnp.min(bd.alphas[:3])) > 0.1 and float(bd.betas[2]) > 0.1
    assert float(jnp.max(jnp.abs(bd.alphas[3:]))) < 1e-12
    assert float(jnp.max(jnp.abs(bd.betas[3:]))) < 1e-12
    assert_bidiagonal_relations(bd, matrix)
    _, sv, _, _ = bd.ritz()
    np.testing.assert_allclose(sv[:3], s, rtol=F64_RTOL)
    np.testing.assert_allclose(sv[3:], 0.0, atol=1e-12)


def minimum_steps(op, s, v0, k, rtol, max_steps=250):
    """The fewest steps whose top-k Ritz values are within rtol of the truth (same start)."""
    bd = jax.jit(lambda v: golub_kahan(op, v, max_steps, jax.random.key(3)))(v0)
    return fewest_columns(bd.matrix(), s, k, rtol, range(k, max_steps + 1))


@pytest.mark.parametrize("rtol", [1e-6, 1e-8])
@pytest.mark.parametrize("name", sorted(KNOWN_SPECTRA))
def test_stopping_rule_takes_within_10_percent_of_the_fewest_steps(name, rtol):
    s, _, op = known_operator(name)
    s = np.asarray(s)
    v0 = jax.random.normal(jax.random.key(2), (N_KNOWN,))
    need = minimum_steps(op, s, v0, 10, rtol)
    bd = jax.jit(lambda v: golub_kahan(op, v, 250, jax.random.key(3), k=10, rtol=rtol))(v0)
    steps = int(bd.steps)
    assert need <= steps <= 1.1 * need, (need, steps)
    theta = np.asarray(bd.ritz()[1][:10])
    assert np.max((s[:10] - theta) / s[:10]) <= rtol


def test_products_are_the_steps_taken_and_restarts_only_on_breakdown():
    counts = {"J": 0, "JT": 0}

    def counted(side, fn):
        def product(v):
            jax.debug.callback(lambda: counts.__setitem__(side, counts[side] + 1))
            return fn(v)
        return product

    s, matrix, op = known_operator("sqrt")
    op = type(op)(counted("J", op.matvec), counted("JT", op.rmatvec), op.n_in, op.n_out, op.dtype)
    v0 = jax.random.normal(jax.random.key(2), (N_KNOWN,))
    bd = jax.jit(lambda v: golub_kahan(op, v, 250, jax.random.key(3), k=10, rtol=1e-8))(v0)
    jax.effects_barrier()
    assert counts == {"J": int(bd.steps), "JT": int(bd.steps)}


def test_reorthogonalization_never_reads_the_whole_buffer():
    # The compiled step touches the bases only in 16-row chunks: no product with the
    # (max_steps, n) buffers, and the restart direction reuses the same loop (no second copy).
    _, _, op = known_operator("sqrt")
    text = jax.jit(lambda v: golub_kahan(op, v, 256, jax.random.key(3), k=10)).lower(
        jnp.ones(N_KNOWN)).as_text()
    shapes = [line.split(":")[-1].strip() for line in text.splitlines() if "dot_general" in line]
    operator = {"(tensor<400x400xf64>, tensor<400xf64>) -> tensor<400xf64>",
                "(tensor<400xf64>, tensor<400x400xf64>) -> tensor<400xf64>"}
    chunk = {"(tensor<16x400xf64>, tensor<400xf64>) -> tensor<16xf64>",
             "(tensor<16xf64>, tensor<16x400xf64>) -> tensor<400xf64>"}
    assert set(shapes) == operator | chunk
    # the two products, and per side one chunk loop (h = B_c w, w − B_cᵀ h) for both passes
    assert len([s for s in shapes if s in operator]) == 2
    assert len([s for s in shapes if s in chunk]) == 4


def test_top_singular_values_is_certified_jittable_and_vmappable():
    s = KNOWN_SPECTRA["clustered"]
    fn, matrix = known_spectrum_map(jax.random.key(1), s, N_KNOWN, N_KNOWN)
    top = jax.jit(lambda x: iso.top_singular_values(fn, x, k=10, rtol=1e-8))(jnp.ones(N_KNOWN))
    assert isinstance(top, iso.TopSingularValues) and bool(top.converged)
    np.testing.assert_allclose(top.singular_values, s[:10], rtol=1e-8)
    assert bool(jnp.all(s[:10] - top.singular_values <= top.error_bounds + 1e-14))
    assert bool(jnp.all(top.error_bounds <= top.residuals))
    # vmapped over inputs (a batch of different Jacobians) and not recompiled on new values
    w = jax.random.normal(jax.random.key(0), (60, 60)) / jnp.sqrt(60.0)
    traced = count_traces(lambda x: iso.top_singular_values(
        lambda z: jnp.tanh(w @ z), x, k=3, rtol=1e-10))
    batched = jax.jit(jax.vmap(traced))
    xs = jax.random.normal(jax.random.key(1), (3, 60))
    top = batched(xs)
    assert top.singular_values.shape == (3, 3) and top.steps.shape == (3,)
    dense = iso.jacobian_spectrum(lambda z: jnp.tanh(w @ z), xs, batched=True)
    np.testing.assert_allclose(top.singular_values, dense.singular_values[:, :3], rtol=1e-9)
    assert bool(jnp.all(top.converged))
    batched(xs + 1.0)
    assert traced.traces == 1
    with pytest.raises(ValueError, match="k must be"):
        iso.top_singular_values(lambda z: z, jnp.ones(4), k=5)


def test_density_and_chi_without_the_top_run():
    # chi deflated by the probes' own Krylov spaces (no product beyond the probes' runs):
    # unbiased, and far tighter than plain Hutchinson on a spectrum with a few large σ.
    s = jnp.concatenate([jnp.array([20.0, 15.0, 12.0, 10.0]), jnp.linspace(1.0, 0.1, 296)])
    fn, matrix = known_spectrum_map(jax.random.key(6), s, 300, 300)
    exact = float(jnp.sum(s**2) / 300)
    errors = []
    for seed in range(4):
        spec = jitted_lanczos(fn, jnp.ones(300), jax.random.key(seed), k=4, num_steps=24,
                              num_probes=6, chi_probes=0, top_run=False)
        assert abs(float(spec.chi) - exact) < 5 * float(spec.chi_stderr) + 1e-12
        errors.append(abs(float(spec.chi) / exact - 1))
        np.testing.assert_allclose(jnp.sum(spec.weights, axis=-1), 1.0, rtol=F64_RTOL)
        np.testing.assert_allclose(spec.top_singular_values, s[:4], rtol=1e-6)
        assert bool(jnp.all(s[:4] - spec.top_singular_values <= spec.error_bounds + 1e-12))
    # plain Hutchinson with the same 6 probes: the quadrature's Σ w σ² of each probe
    plain = jnp.mean(jnp.sum(spec.weights * spec.nodes**2, axis=-1))
    assert max(errors) < 0.02 and max(errors) < abs(float(plain) / exact - 1)
    with pytest.raises(ValueError, match="chi_probes"):
        lanczos_spectrum(fn, jnp.ones(300), jax.random.key(0), k=2, num_probes=1, chi_probes=0,
                         top_run=False)


def test_histogram_density_over_a_part_of_the_range_is_the_share_inside_it():
    """Both engines: the area of histogram(density=True) over a partial range is the share of σ
    inside it (here σ log-spaced over four decades, range holding the top 2.5 decades: 1/2
    of them, up to the SLQ kernel's blur at the cut)."""
    s = jnp.logspace(0, -4, 200)
    fn, _ = known_spectrum_map(jax.random.key(1), s, 200, 200)
    dense = iso.jacobian_spectrum(fn, jnp.ones(200))
    free = iso.jacobian_spectrum(fn, jnp.ones(200), method="lanczos", key=jax.random.key(0))
    areas = []
    for spec in (dense, free):
        counts, edges = spec.histogram(bins=20, range=(-2.0, 0.5))
        areas.append(float(np.sum(counts * np.diff(edges))))
    assert areas[0] == pytest.approx(0.5, abs=1e-12)
    blur = free.bandwidth / 4 / 2  # a kernel of width h moves about h/2 decades' share across
    # within three standard errors over the probes of the share below the cut, plus the blur
    assert abs(areas[1] - areas[0]) < 3 * free.share_stderr(1e-2) + blur, areas
    assert areas[1] < 0.9  # not normalized to the range (it was 1.0)
