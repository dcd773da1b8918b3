"""Layer-by-layer spectra (`isometry.spectrum._layerwise`): ∂x_l/∂x_0 for every l in one pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry import plot


def _fc(variant, depth=6, width=48):
    return models.FullyConnected(depth, width, variant=variant, activation="tanh",
                                 alpha_init=0.3 if variant == "rezero" else 0.0,
                                 in_features=20, param_dtype=jnp.float64, rngs=nnx.Rngs(0))


def test_every_depth_matches_the_dense_spectrum_of_the_truncated_stack():
    net = _fc("rezero")
    embed_fn, states_fn, params = iso.from_stack(net)
    x = jax.random.normal(jax.random.key(1), (20,))
    x0 = embed_fn(params, x)
    spectra = iso.layerwise_spectrum_fn(states_fn)(params, x0)
    assert isinstance(spectra, iso.Spectrum)  # one result, with a depth axis
    assert spectra.singular_values.shape == (net.depth + 1, 48)
    np.testing.assert_allclose(spectra.singular_values[0], 1.0, rtol=1e-12)  # J_0 = I
    blocks = net.unstacked_blocks()
    for l in (1, 3, 6):
        def truncated(x, l=l):  # an explicit loop over the first l blocks
            for block in blocks[:l]:
                x = block(x)
            return x
        exact = iso.jacobian_spectrum(truncated, x0)
        np.testing.assert_allclose(spectra.singular_values[l], exact.singular_values, rtol=1e-10)
        np.testing.assert_allclose(spectra.chi[l], exact.chi, rtol=1e-10)


def test_hutchinson_profile_agrees_with_the_dense_profile_within_its_error():
    embed_fn, states_fn, params = iso.from_stack(_fc("plain"))
    xs = jax.random.normal(jax.random.key(2), (2, 20))
    x0 = jax.vmap(embed_fn, in_axes=(None, 0))(params, xs)
    spectra = iso.layerwise_spectrum_fn(states_fn, batched=True)(params, x0)
    dense_chi = spectra.chi  # (batch, L+1)
    chi, err = iso.layerwise_chi_fn(states_fn, num_probes=64, batched=True)(
        params, x0, jax.random.key(3))
    assert chi.shape == dense_chi.shape == (2, 7)
    np.testing.assert_allclose(chi[:, 0], 1.0, rtol=1e-12)
    assert bool(jnp.all(jnp.abs(chi - dense_chi) <= 5 * err + 1e-12))


def test_from_stack_needs_a_layer_stack_and_large_requests_point_to_chi():
    with pytest.raises(TypeError, match="LayerStack"):
        iso.from_stack(nnx.Linear(3, 3, rngs=nnx.Rngs(0)))
    _, states_fn, params = iso.from_stack(_fc("residual"))
    lfn = iso.layerwise_spectrum_fn(states_fn, memory_budget=1e4)
    with pytest.raises(iso.JacobianTooLargeError, match="layerwise_chi_fn"):
        lfn(params, jnp.ones(48))


def test_profile_plot_of_several_variants(tmp_path):
    x = jax.random.normal(jax.random.key(4), (20,))
    profiles = {}
    for variant in ("plain", "residual", "rezero"):
        embed_fn, states_fn, params = iso.from_stack(_fc(variant))
        profiles[variant] = iso.layerwise_spectrum_fn(states_fn)(params, embed_fn(params, x))
    _, states_fn, params = iso.from_stack(_fc("postnorm"))
    profiles["postnorm (chi only)"] = iso.layerwise_chi_fn(states_fn)(
        params, jnp.ones(48), jax.random.key(5))[0]
    path = plot.save(plot.layerwise_profiles(
        {k: iso.depth_profile(v) for k, v in profiles.items()}), tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 1000 and path.endswith("layers.png")


def test_cli_layerwise_writes_profiles(tmp_path):
    import json

    from isometry.cli import main

    code = main(["spectrum", "--depth", "3", "--width", "16", "--samples", "1", "--variant",
                 "plain,rezero", "--alpha-init", "0.2", "--layerwise", "--out", str(tmp_path)])
    assert code == 0
    profiles = json.loads((tmp_path / "layerwise.json").read_text())["profiles"]
    assert set(profiles) == {"plain", "rezero"}
    assert len(profiles["rezero"]["chi"]) == 4 and profiles["rezero"]["chi"][0] == 1.0
    assert (tmp_path / "layerwise.png").exists()


class _OwnStack(nnx.Module):
    """A user's model that is no `models.Stack` but follows `iso.LayerStack`: x ↦ tanh(W x)
    L times, its layers stacked by hand and scanned."""

    def __init__(self, depth, width, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (depth, width, width)) / width**0.5)

    def embed(self, x):
        return 2.0 * x

    def _scan(self, x0):
        return jax.lax.scan(lambda h, w: (jnp.tanh(w @ h),) * 2, x0, self.w[...])

    def stack(self, x0):
        return self._scan(x0)[0]

    def states(self, x0):
        return jnp.concatenate([x0[None], self._scan(x0)[1]])

    def head(self, x):
        return jnp.sum(x)

    def __call__(self, x):
        return self.head(self.stack(self.embed(x)))


def test_a_users_own_layer_stack_gets_layerwise_spectra():
    model = _OwnStack(5, 6, nnx.Rngs(0))
    assert isinstance(model, iso.LayerStack)
    embed_fn, states_fn, params = iso.from_stack(model)
    x0 = embed_fn(params, jax.random.normal(jax.random.key(1), (6,), jnp.float64))
    spectra = iso.layerwise_spectrum_fn(states_fn)(params, x0)
    w = np.asarray(model.w[...])
    h, jac = np.asarray(x0), np.eye(6)
    for l in range(5):  # J_{l+1} = diag(1 − tanh²(W_l h_l)) W_l J_l
        pre = w[l] @ h
        jac = (1 - np.tanh(pre) ** 2)[:, None] * (w[l] @ jac)
        h = np.tanh(pre)
        np.testing.assert_allclose(spectra.singular_values[l + 1],
                                   np.linalg.svd(jac, compute_uv=False), rtol=1e-10)


def test_the_budget_the_caller_passed_is_the_one_honoured():
    """The compiled core checks the caller's budget too (it used the 4 GiB default): lowered
    only, so nothing is allocated. 8,000 inputs x 3 states: 1.0 GiB with the basis, refused
    under 0.5 GiB; 24,000 inputs: 7.3 GiB, over the default, traced under a 64 GiB budget."""
    def states_fn(p, x0):
        return jnp.stack([x0 * p ** i for i in range(3)])

    small = iso.layerwise_spectrum_fn(states_fn, memory_budget=2**29)
    with pytest.raises(iso.JacobianTooLargeError, match="memory budget of 0.50 GiB"):
        small.program.lower(jnp.float32(0.5), jnp.ones(8000, jnp.float32))
    big = iso.layerwise_spectrum_fn(states_fn, memory_budget=64 * 2**30)
    big.program.lower(jnp.float32(0.5), jnp.ones(24_000, jnp.float32))  # no budget error
    spec = iso.layerwise_spectrum_fn(states_fn)(jnp.float32(0.5), jnp.ones(6, jnp.float32))
    np.testing.assert_allclose(spec.singular_values[:, 0], [1.0, 0.5, 0.25], rtol=1e-6)
