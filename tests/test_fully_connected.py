"""models.FullyConnected: the variants of Table 1, initialization, ReZero at α = 0."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import isometry as iso
import models
from models.fully_connected import VARIANTS


def _x(width, key=1):
    return jax.random.normal(jax.random.key(key), (width,), dtype=jnp.float64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_and_gives_a_finite_spectrum(variant):
    net = models.FullyConnected(4, 16, variant=variant, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    spec = iso.spectrum_fn(*iso.from_nnx(net)[:1])(iso.from_nnx(net)[1], _x(16))
    assert spec.singular_values.shape == (16,)
    assert np.all(np.isfinite(spec.singular_values)) and float(spec.chi) > 0


def test_alpha_init_for_a_variant_without_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha_init=0.3 does nothing.*'plain'.*\\['rezero'\\]"):
        models.FullyConnected(2, 8, variant="plain", alpha_init=0.3, rngs=nnx.Rngs(0))


def test_variants_follow_table_1():
    width = 8
    x = _x(width)
    for variant in VARIANTS:
        net = models.FullyConnected(1, width, variant=variant,
                                    alpha_init=0.3 if variant == "rezero" else 0.0,
                                    param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        block = net.blocks.layer(0)
        f = block.branch
        norm = getattr(block, "norm", None)
        expected = {
            "plain": lambda: f(x),
            "residual": lambda: x + f(x),
            "norm": lambda: norm(f(x)),
            "prenorm": lambda: x + f(norm(x)),
            "postnorm": lambda: norm(x + f(x)),
            "rezero": lambda: x + 0.3 * f(x),
        }[variant]()
        np.testing.assert_allclose(net(x), expected, rtol=1e-12)


def test_orthogonal_linear_stack_has_every_sigma_equal_sigma_w_to_the_L():
    depth, sigma_w = 5, 1.1
    net = models.FullyConnected(depth, 12, variant="plain", activation="linear", weights="orthogonal",
                                sigma_w2=sigma_w**2, param_dtype=jnp.float64, rngs=nnx.Rngs(3))
    apply_fn, params = iso.from_nnx(net)
    spec = iso.spectrum_fn(apply_fn)(params, _x(12))
    np.testing.assert_allclose(spec.singular_values, np.full(12, sigma_w**depth), rtol=1e-12)


def test_gaussian_init_has_the_stated_variance():
    width, sigma_w2 = 256, 2.0
    net = models.FullyConnected(2, width, variant="plain", sigma_w2=sigma_w2, sigma_b2=0.04,
                                param_dtype=jnp.float64, rngs=nnx.Rngs(4))
    w = np.asarray(net.blocks.layer(0).linear.kernel[...])
    b = np.asarray(net.blocks.layer(0).linear.bias[...])
    # Sample variance of n = 65,536 entries has relative standard error sqrt(2/n) ≈ 0.55%.
    assert abs(w.var() * width / sigma_w2 - 1) < 4 * np.sqrt(2 / w.size)
    assert abs(b.var() / 0.04 - 1) < 4 * np.sqrt(2 / b.size)
    residual = models.FullyConnected(1, width, variant="residual", param_dtype=jnp.float64,
                                     rngs=nnx.Rngs(4))
    w_res = np.asarray(residual.blocks.layer(0).linear.kernel[...])
    assert abs(w_res.var() * width / 0.25 - 1) < 4 * np.sqrt(2 / w_res.size)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rezero_at_alpha_zero_is_exactly_isometric(dtype):
    net = models.FullyConnected(16, 32, variant="rezero", param_dtype=dtype, rngs=nnx.Rngs(5))
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(6), (3, 32), dtype=dtype)
    spec = iso.spectrum_fn(apply_fn, batched=True)(params, x)
    np.testing.assert_array_equal(spec.singular_values, np.ones((3, 32)))


def test_rezero_gradients_at_alpha_zero():
    net = models.FullyConnected(6, 16, variant="rezero", param_dtype=jnp.float64, rngs=nnx.Rngs(7))
    x = _x(16, key=8)
    target = _x(16, key=9)

    def loss(model):
        return jnp.sum((model(x) - target) ** 2)

    grads = nnx.grad(loss)(net)["blocks"]["layers"]  # stacked: a leading axis of 6 layers
    assert grads["alpha"][...].shape == (6,)
    assert float(jnp.min(jnp.abs(grads["alpha"][...]))) > 1e-6  # dL/dα_l = <dL/dx_L, F_l(x_0)>
    assert float(jnp.max(jnp.abs(grads["linear"]["kernel"][...]))) == 0.0
    assert float(jnp.max(jnp.abs(grads["linear"]["bias"][...]))) == 0.0


def test_alpha_helpers_and_optax_mask():
    net = models.FullyConnected(3, 4, variant="rezero", alpha_init=0.5, rngs=nnx.Rngs(0))
    params = nnx.state(net, nnx.Param)
    alphas = iso.alpha_values(params)
    assert list(alphas) == ["blocks/0/alpha", "blocks/1/alpha", "blocks/2/alpha"]
    assert all(float(a) == 0.5 for a in alphas.values())
    labels = jax.tree.map(lambda m: "alpha" if m else "rest", iso.alpha_mask(params))
    tx = optax.multi_transform({"alpha": optax.sgd(1.0), "rest": optax.set_to_zero()}, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params))
    new = optax.apply_updates(params, updates)
    assert all(float(a) == -0.5 for a in iso.alpha_values(new).values())  # α moved by −lr·1
    np.testing.assert_array_equal(new["blocks"]["layers"]["linear"]["kernel"][...],
                                  params["blocks"]["layers"]["linear"]["kernel"][...])


def test_frozen_alpha_is_not_a_param():
    net = models.FullyConnected(2, 4, variant="rezero", train_alpha=False, rngs=nnx.Rngs(0))
    assert iso.alpha_values(nnx.state(net, nnx.Param)) == {}
    assert len(iso.alpha_values(nnx.state(net))) == 2


def test_projections_and_bad_arguments():
    net = models.FullyConnected(2, 8, in_features=12, out_features=3, rngs=nnx.Rngs(0))
    assert net(jnp.ones((5, 12))).shape == (5, 3)
    with pytest.raises(ValueError, match="unknown FullyConnected variant 'resnet'"):
        models.FullyConnected(2, 8, variant="resnet", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        models.FullyConnected(2, 8, activation="swish", rngs=nnx.Rngs(0))


# --- the authors' notebook details (issue 15, item 7) -------------------------------------

def _small_net(**kw):
    return models.FullyConnected(3, 8, variant="rezero", alpha_init=0.5, sigma_b2=0.01,
                                 in_features=5, out_features=4, param_dtype=jnp.float64,
                                 rngs=nnx.Rngs(42), **kw)


def _forward_in_numpy(net, x):
    """The default net by hand from its parameters: x_0 = W_in x + b_in (no φ), then
    x_{i+1} = x_i + α_i relu(W_i x_i + b_i), then W_out x_L + b_out (flax's kernels: x @ W)."""
    layers = net.blocks.layers
    proj_in, proj_out = net.input_proj, net.output_proj
    h = np.asarray(x) @ np.asarray(proj_in.kernel[...]) + np.asarray(proj_in.bias[...])
    for kernel, bias, alpha in zip(np.asarray(layers.linear.kernel[...]),
                                   np.asarray(layers.linear.bias[...]),
                                   np.asarray(layers.alpha[...])):
        h = h + alpha * np.maximum(h @ kernel + bias, 0.0)
    return h @ np.asarray(proj_out.kernel[...]) + np.asarray(proj_out.bias[...])


def test_the_defaults_are_the_options_off_and_compute_the_documented_net():
    """`input_activation` and `torch_init` default to off: the same weights drawn, the same
    outputs, and those outputs are the module docstring's formula computed in numpy."""
    net = _small_net()
    off = _small_net(input_activation=False, torch_init=False)
    for a, b in zip(jax.tree.leaves(nnx.state(net)), jax.tree.leaves(nnx.state(off))):
        np.testing.assert_array_equal(a, b)
    x = jax.random.normal(jax.random.key(7), (3, 5), jnp.float64)
    np.testing.assert_array_equal(net(x), off(x))
    np.testing.assert_allclose(net(x), _forward_in_numpy(net, x), rtol=1e-13, atol=1e-14)
    # projections' biases are zero by default; the blocks' are drawn N(0, σ_b²) with σ_b² > 0
    assert np.all(np.asarray(net.input_proj.bias[...]) == 0)
    assert np.all(np.asarray(net.output_proj.bias[...]) == 0)
    assert np.all(np.asarray(net.blocks.layers.linear.bias[...]) != 0)
    np.testing.assert_array_equal(net.blocks.layers.alpha[...], [0.5, 0.5, 0.5])


def test_input_activation_applies_phi_after_the_input_layer_and_changes_nothing_else():
    plain, authors = _small_net(), _small_net(input_activation=True)
    for a, b in zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(authors))):
        np.testing.assert_array_equal(a, b)
    x = jax.random.normal(jax.random.key(7), (3, 5), jnp.float64)
    projected = plain.input_proj(x)
    assert np.any(projected < 0)
    np.testing.assert_array_equal(plain.embed(x), projected)
    np.testing.assert_array_equal(authors.embed(x), jax.nn.relu(projected))
    np.testing.assert_array_equal(authors(x), plain.head(plain.stack(jax.nn.relu(projected))))
    tanh = models.FullyConnected(2, 8, activation="tanh", in_features=5, input_activation=True,
                                 param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(tanh.embed(x), jnp.tanh(tanh.input_proj(x)))


def _assert_uniform(values, bound):
    """Samples of U(−bound, bound): inside the bound, filling it, variance bound²/3.

    The sample variance of n uniforms has relative standard error √(0.8/n) (fourth moment
    bound⁴/5); the largest |u| of n samples falls below (1 − t)·bound with probability
    (1 − t)^n.
    """
    v = np.asarray(values).ravel()
    n = v.size
    assert np.all(np.abs(v) <= bound)
    assert np.max(np.abs(v)) > (1 - 20 / n) * bound  # fails with probability e^-20
    assert abs(v.var() / (bound**2 / 3) - 1) < 5 * np.sqrt(0.8 / n)
    assert abs(v.mean()) < 5 * bound / np.sqrt(3 * n)


def test_torch_init_draws_biases_and_output_weights_as_pytorch_per_fan_in():
    depth, width, n_in, n_out = 64, 256, 48, 10
    kw = dict(in_features=n_in, out_features=n_out, param_dtype=jnp.float64, rngs=nnx.Rngs(3))
    net = models.FullyConnected(depth, width, variant="plain", torch_init=True, **kw)
    default = models.FullyConnected(depth, width, variant="plain", **kw | dict(rngs=nnx.Rngs(3)))
    _assert_uniform(net.blocks.layers.linear.bias[...], 1 / np.sqrt(width))
    _assert_uniform(net.input_proj.bias[...], 1 / np.sqrt(n_in))
    _assert_uniform(net.output_proj.kernel[...], 1 / np.sqrt(width))
    out_bias = np.asarray(net.output_proj.bias[...])
    assert np.all(np.abs(out_bias) <= 1 / np.sqrt(width)) and np.all(out_bias != 0)
    # input weights: kaiming_normal_, N(0, 2/fan_in) untruncated (flax's He-normal stops at 2σ)
    w_in = np.asarray(net.input_proj.kernel[...])
    assert abs(w_in.var() * n_in / 2 - 1) < 5 * np.sqrt(2 / w_in.size)
    # flax's He-normal is cut at 2 standard deviations of a normal widened by 1/0.8796 (to
    # keep the variance): nothing beyond 2.274σ, where an untruncated normal puts 2.3%
    cut = 2 / 0.87962566 * np.sqrt(2 / n_in)
    assert np.mean(np.abs(w_in) > cut) > 0.015
    assert np.max(np.abs(np.asarray(default.input_proj.kernel[...]))) <= cut
    # the blocks' weights are the paper's either way: the same draws
    np.testing.assert_array_equal(net.blocks.layers.linear.kernel[...],
                                  default.blocks.layers.linear.kernel[...])


def test_notebook_options_need_what_they_use():
    with pytest.raises(ValueError, match="input_activation .* needs in_features"):
        models.FullyConnected(2, 8, input_activation=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="torch_init draws the biases"):
        models.FullyConnected(2, 8, torch_init=True, sigma_b2=0.1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_as_data_equal_the_modules_in_float64(variant):
    """`fc_blocks_apply_fn` runs `Block`'s own `fc_block`: the same values and Jacobians as the
    modules on the same weights (generic LayerNorm parameters, α ≠ 0), to 1e-12."""
    alpha_init = 0.3 if variant == "rezero" else 0.0
    net = models.FullyConnected(4, 16, variant=variant, alpha_init=alpha_init, activation="tanh",
                                param_dtype=jnp.float64, rngs=nnx.Rngs(2))
    nnx.update(net, jax.tree_util.tree_map(
        lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape),
        nnx.state(net)))
    apply_fn, data = models.fc_blocks_apply_fn("tanh"), models.fc_blocks_as_data(net)
    x = _x(16)
    np.testing.assert_allclose(apply_fn(data, x), net(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(lambda z: apply_fn(data, z))(x), jax.jacfwd(net)(x),
                               rtol=1e-12, atol=1e-12)
