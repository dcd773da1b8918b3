"""isometry.experiments._sampling: measured nets in float64 without touching the global x64 setting."""

import jax
import numpy as np

from isometry.experiments._sampling import probe_input, sample_singular_values


def test_float64_is_scoped():
    with jax.enable_x64(False):
        sv = sample_singular_values(activation="linear", weights="orthogonal", depth=2, width=8,
                                    sigma_w2=1.44, sigma_b2=0.0, samples=2, q_star=1.0)
        assert not jax.config.read("jax_enable_x64")  # the caller's setting stays
    assert sv.dtype == np.float64
    np.testing.assert_allclose(sv, 1.44, rtol=1e-12)  # σ = σ_w^L exactly


def test_probe_input_length():
    x = probe_input(jax.random.key(0), 64, 0.7, 2.0, 0.1, jax.numpy.float64)
    assert abs(float(jax.numpy.sum(x ** 2)) / 64 - 0.3) < 1e-12  # (q* − σ_b²)/σ_w²
