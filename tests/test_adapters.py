"""NNX and Linen modules through the adapters give the spectra of their weight matrices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import isometry as iso


def test_from_nnx_linear_layer_spectrum_is_its_kernel():
    layer = nnx.Linear(6, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(layer)
    spec = iso.spectrum_fn(apply_fn)(params, jnp.linspace(-1.0, 1.0, 6))
    expected = np.linalg.svd(np.asarray(layer.kernel[...]), compute_uv=False)
    np.testing.assert_allclose(spec.singular_values, expected, rtol=1e-12)
    assert (spec.n_in, spec.n_out) == (6, 4)


def test_from_nnx_uses_the_params_it_is_given():
    layer = nnx.Linear(3, 3, use_bias=False, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    apply_fn, params = iso.from_nnx(layer)
    scaled = jax.tree.map(lambda a: 3.0 * a, params)
    s1 = iso.spectrum_fn(apply_fn)(params, jnp.ones(3)).singular_values
    s3 = iso.spectrum_fn(apply_fn)(scaled, jnp.ones(3)).singular_values
    np.testing.assert_allclose(s3, 3.0 * s1, rtol=1e-12)


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(5, param_dtype=jnp.float64, name="first")(x)
        return nn.Dense(5, param_dtype=jnp.float64, name="second")(jnp.tanh(h))


def test_from_linen_matches_the_chain_rule():
    module = _LinenMLP()
    x = jnp.linspace(-1.0, 1.0, 5)
    variables = module.init(jax.random.key(0), x)
    apply_fn, params = iso.from_linen(module, variables)
    spec = iso.spectrum_fn(apply_fn)(params, x)
    p = variables["params"]
    w0, b0 = p["first"]["kernel"], p["first"]["bias"]
    w1 = p["second"]["kernel"]
    h = x @ w0 + b0
    jac = (w0 * (1 - jnp.tanh(h) ** 2)[None, :]) @ w1  # Jᵀ, since Flax computes x @ kernel
    np.testing.assert_allclose(spec.singular_values, np.linalg.svd(jac, compute_uv=False), rtol=1e-12)
