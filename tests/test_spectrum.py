"""The dense spectrum engine: known spectra, batches, statistics, compilation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
from helpers import count_traces, known_spectrum_map


@pytest.mark.parametrize("n_in,n_out", [(8, 8), (10, 6), (6, 10)])
@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-6)])
def test_known_spectrum(n_in, n_out, dtype, rtol):
    k = min(n_in, n_out)
    s = jnp.geomspace(5.0, 0.2, k)
    fn, _ = known_spectrum_map(jax.random.key(k), s, n_in, n_out, dtype=dtype)
    spec = iso.jacobian_spectrum(fn, jnp.linspace(-1, 1, n_in, dtype=dtype))
    assert spec.singular_values.dtype == dtype
    assert (spec.n_in, spec.n_out) == (n_in, n_out)
    np.testing.assert_allclose(spec.singular_values, s, rtol=rtol)
    np.testing.assert_allclose(spec.chi, np.sum(np.square(s)) / n_in, rtol=rtol)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_modes_agree(mode):
    fn, _ = known_spectrum_map(jax.random.key(1), [4.0, 1.0, 0.25], 7, 5)
    spec = iso.jacobian_spectrum(fn, jnp.ones(7), mode=mode)
    assert spec.singular_values.shape == (5,)  # min(7, 5); the map has rank 3
    np.testing.assert_allclose(spec.singular_values[:3], [4.0, 1.0, 0.25], rtol=1e-12)
    np.testing.assert_array_less(spec.singular_values[3:], 1e-14)


def test_float64_resolves_tiny_singular_values():
    # σ spans 12 decades: only an SVD of J itself (not of JJᵀ) in float64 recovers the bottom.
    s = jnp.array([1.0, 1e-4, 1e-8, 1e-12])
    fn, _ = known_spectrum_map(jax.random.key(2), s, 4, 4)
    spec = iso.jacobian_spectrum(fn, jnp.ones(4))
    np.testing.assert_allclose(spec.singular_values, s, rtol=1e-3)


def test_batched_equals_per_input():
    w = jax.random.normal(jax.random.key(3), (6, 6)) / np.sqrt(6)
    fn = lambda x: jnp.tanh(w @ x)  # noqa: E731
    xs = jax.random.normal(jax.random.key(4), (5, 6))
    batched = iso.jacobian_spectrum(fn, xs, batched=True)
    assert batched.singular_values.shape == (5, 6)
    assert batched.chi.shape == (5,)
    for i in range(5):
        one = iso.jacobian_spectrum(fn, xs[i])
        np.testing.assert_allclose(batched.singular_values[i], one.singular_values, rtol=1e-12)
    # A memory budget that fits two Jacobians at a time maps the batch in chunks: same result.
    two = 2 * 6 * 6 * 8 * 2
    chunked = iso.jacobian_spectrum(fn, xs, batched=True, memory_budget=two)
    np.testing.assert_allclose(chunked.singular_values, batched.singular_values, rtol=1e-12)


def test_pytree_input_spectrum_matches_flat():
    def fn(tree):
        return jnp.concatenate([2.0 * tree["a"], 0.5 * tree["b"].ravel()])

    x = {"a": jnp.ones(2), "b": jnp.ones((2, 2))}
    spec = iso.jacobian_spectrum(fn, x)
    np.testing.assert_allclose(spec.singular_values, [2, 2, 0.5, 0.5, 0.5, 0.5], rtol=1e-12)


def test_statistics():
    s = np.array([4.0, 1.5, 0.8, 0.25])
    fn, matrix = known_spectrum_map(jax.random.key(5), s, 4, 4)
    spec = iso.jacobian_spectrum(fn, jnp.ones(4))
    np.testing.assert_allclose(spec.chi, np.sum(np.asarray(matrix) ** 2) / 4, rtol=1e-12)
    np.testing.assert_allclose(spec.log_singular_values, np.log(s), rtol=1e-12)
    np.testing.assert_allclose(spec.mean_log, np.mean(np.log(s)), rtol=1e-12)
    np.testing.assert_allclose(spec.std_log, np.std(np.log(s)), rtol=1e-12)
    np.testing.assert_allclose(spec.sigma_max, 4.0, rtol=1e-12)
    np.testing.assert_allclose(spec.sigma_min, 0.25, rtol=1e-12)
    np.testing.assert_allclose(spec.condition_number, 16.0, rtol=1e-12)
    assert float(spec.isometry_share) == 0.5  # 1.5 and 0.8 are in [0.5, 2]; 4 and 0.25 are not
    counts, edges = spec.histogram(bins=4, range=(-1.0, 1.0), density=False)
    np.testing.assert_array_equal(counts, [1, 1, 1, 1])  # log10: -0.60, -0.10, 0.18, 0.60
    summary = spec.to_dict()
    assert set(summary) == {"engine", "n_in", "n_out", "resolution", "chi", "mean_log", "std_log",
                            "sigma_max", "sigma_min", "condition_number", "isometry_share",
                            "zero_share"}
    assert summary["zero_share"] == 0.0 and summary["engine"] == "dense"


def test_spectrum_is_a_pytree_through_jit_and_vmap():
    spec = iso.Spectrum.from_singular_values(jnp.array([[3.0, 1.0], [2.0, 2.0]]), 2, 2)
    doubled = jax.jit(lambda s: jax.tree.map(lambda a: 2 * a, s))(spec)
    assert isinstance(doubled, iso.Spectrum) and doubled.n_in == 2
    chis = jax.vmap(lambda s: s.chi)(spec)
    np.testing.assert_allclose(chis, [5.0, 4.0])


def test_spectrum_fn_does_not_recompile_for_new_parameter_values():
    apply_fn = count_traces(lambda params, x: jnp.tanh(params["w"] @ x + params["b"]))
    sfn = iso.spectrum_fn(apply_fn)
    x = jnp.linspace(-1.0, 1.0, 5)
    p1 = {"w": jax.random.normal(jax.random.key(0), (5, 5)), "b": jnp.full(5, 0.1)}
    p2 = jax.tree.map(lambda a: 0.5 * a + 0.3, p1)
    s1 = sfn(p1, x)
    traces_after_first = apply_fn.traces
    s2 = sfn(p2, x)
    assert apply_fn.traces == traces_after_first  # no retrace for new values of the same shapes
    assert sfn.trace_count == 1
    assert not np.allclose(s1.singular_values, s2.singular_values)


def test_non_floating_input_is_an_error():
    with pytest.raises(TypeError, match="has dtype int32.*cast it"):
        iso.jacobian_spectrum(lambda x: x * 1.0, jnp.arange(3, dtype=jnp.int32))


def test_nonfinite_jacobian_is_an_error_with_a_count():
    fn = lambda x: jnp.sqrt(x)  # noqa: E731  (derivative at 0 is inf)
    with pytest.raises(FloatingPointError, match=r"has 1 non-finite entries \(NaN/Inf\) out of 9"):
        iso.jacobian_spectrum(fn, jnp.array([0.0, 1.0, 4.0]))


def test_too_large_dense_jacobian_fails_fast_with_size_and_advice():
    x = jax.ShapeDtypeStruct((200_000,), jnp.float32)
    with pytest.raises(iso.JacobianTooLargeError, match=r"149\.01 GiB.*engine=isometry\.lanczos\(\)"):
        # eval_shape-able: nothing is traced for real or allocated before the check
        iso.jacobian_spectrum(lambda v: 2.0 * v, jnp.zeros(x.shape, x.dtype))


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown method 'exact'; use one of"):
        iso.spectrum_fn(lambda p, x: x, method="exact")


def test_batched_needs_a_common_batch_axis():
    with pytest.raises(ValueError, match="same leading batch axis"):
        iso.jacobian_spectrum(lambda t: t["a"].sum() * t["b"], {"a": jnp.ones(3), "b": jnp.ones((2, 2))},
                              batched=True)


def test_spectrum_function_program_is_the_public_compiled_core():
    sfn = iso.spectrum_fn(lambda p, x: p * x)
    assert isinstance(sfn, iso.SpectrumFunction) and sfn.trace_count == 0
    spec, counts = sfn.program(jnp.asarray(2.0), jnp.ones(3), None)
    assert set(counts) == {"input", "output"} and int(counts["output"]) == 0
    np.testing.assert_allclose(spec.singular_values, 2.0)
    assert sfn.trace_count == 1
    sfn(jnp.asarray(3.0), jnp.ones(3))
    assert sfn.trace_count == 1
    sfn(jnp.asarray(3.0), jnp.ones(4))  # a new shape compiles anew
    assert sfn.trace_count == 2


def test_spectrum_function_compile_runs_ahead_of_time_with_the_same_checks():
    sfn = iso.spectrum_fn(lambda p, x: p * x, method="lanczos", k=2, num_steps=3, num_probes=2,
                          chi_probes=2)
    run = sfn.compile(jnp.asarray(2.0), jnp.ones(4))
    assert sfn.trace_count == 1
    for p in (2.0, 3.0):  # new parameter values: no new trace
        np.testing.assert_allclose(run(jnp.asarray(p), jnp.ones(4)).top_singular_values, p,
                                   rtol=1e-5)
    assert sfn.trace_count == 1
    with pytest.raises(FloatingPointError, match="input"):
        run(jnp.asarray(2.0), jnp.full(4, jnp.nan))


def test_shared_statistics_of_a_dense_spectrum_equal_the_direct_computation():
    # float64: the protocol's statistics against numpy on σ (the computation fig4 did before)
    with jax.enable_x64(True):
        s = jnp.array([[3.0, 1.0, 1e-7, 0.0], [2.0, 0.5, 0.25, 1e-9]], jnp.float64)
        spec = iso.Spectrum.from_singular_values(s, 4, 4)
        stats = spec.statistics(1e-6)
        a = np.asarray(s).ravel()
        log10 = np.log10(np.clip(a, np.finfo(np.float64).tiny, None))
        assert stats["mean_sigma2"] == pytest.approx(np.mean(a**2), rel=1e-14)
        assert stats["median_log10"] == pytest.approx(np.median(log10), rel=1e-14)
        assert stats["vanished_share"] == pytest.approx(np.mean(a < 1e-6), rel=1e-14)
        counts = spec.binned_counts(9, (-6.0, 3.0))
        want, _ = np.histogram(np.clip(np.log10(a[a > 0]), -6, 3), bins=9, range=(-6, 3))
        np.testing.assert_array_equal(counts, want)
