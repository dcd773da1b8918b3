"""Scanned layer stacks (`models._stack.Layers`): equal to an explicit per-layer loop over the
same weights, programs whose size does not grow with depth, ReZero's identity at every depth.

The loop reference is `Stack.unstacked_blocks()`: every block as its own module (its slice of
the stacked variables), applied one after the other in Python. Sizes are tiny, float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import isometry as iso
import models
from isometry.train import make_train_step
from test_models import CASES, MODELS, REZERO_CASES, build, inputs  # tests/ is on sys.path

F64 = jnp.float64


@jax.jit(static_argnums=0)
def loop_apply(graphdef, params, x, *rest):
    """The model's function as an explicit Python loop over its blocks (the old layout)."""
    model = nnx.merge(graphdef, params, *rest)
    h = model.embed(x)
    for block in model.unstacked_blocks():
        h = block(h)
    return model.head(h)


def _loss(apply, graphdef, params, rest, x, target):
    return jnp.sum(jnp.tanh(apply(graphdef, params, x, rest)) * target)


@jax.jit(static_argnums=0)
def scan_apply(graphdef, params, x, *rest):
    return nnx.merge(graphdef, params, *rest)(x)


@pytest.mark.parametrize("name,variant", CASES)
def test_scan_equals_the_per_layer_loop(name, variant):
    """Outputs, Jacobian spectra and parameter gradients, float64 to 1e-12."""
    model = build(name, variant, alpha_init=0.3)
    graphdef, params = nnx.split(model)
    x = inputs(name)
    y_scan, y_loop = scan_apply(graphdef, params, x), loop_apply(graphdef, params, x)
    np.testing.assert_allclose(y_scan, y_loop, rtol=1e-12, atol=1e-12)

    spec_scan = iso.jacobian_spectrum(lambda v: scan_apply(graphdef, params, v), x)
    spec_loop = iso.jacobian_spectrum(lambda v: loop_apply(graphdef, params, v), x)
    np.testing.assert_allclose(spec_scan.singular_values, spec_loop.singular_values,
                               rtol=1e-12, atol=1e-12)

    target = jax.random.normal(jax.random.key(3), y_scan.shape, F64)
    graphdef, weights, rest = nnx.split(model, nnx.Param, ...)
    g_scan = jax.grad(lambda p: _loss(scan_apply, graphdef, p, rest, x, target))(weights)
    g_loop = jax.grad(lambda p: _loss(loop_apply, graphdef, p, rest, x, target))(weights)
    for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_loop)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["fc", "transformer"])
def test_hidden_states_are_the_loop_states(name):
    model = build(name, "rezero", alpha_init=0.3)
    x = inputs(name)
    states = model.hidden_states(x)
    h, expected = model.embed(x), [model.embed(x)]
    for block in model.unstacked_blocks():
        h = block(h)
        expected.append(h)
    np.testing.assert_allclose(states, jnp.stack(expected), rtol=1e-12, atol=1e-12)


def test_resnet_states_are_runs_of_equal_shape_in_depth_order():
    model = models.ResNet(variant="residual", stages=(2, 2), width=4, param_dtype=F64,
                          rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(1), (6, 6, 3), F64)
    runs = model.hidden_states(x)
    assert [r.shape for r in runs] == [(3, 6, 6, 4), (2, 3, 3, 8)]
    h, expected = model.embed(x), [model.embed(x)]
    for block in model.unstacked_blocks():
        h = block(h)
        expected.append(h)
    np.testing.assert_allclose(jnp.concatenate([r.ravel() for r in runs]),
                               jnp.concatenate([e.ravel() for e in expected]),
                               rtol=1e-12, atol=1e-12)


def test_dropout_and_batchnorm_state_go_through_the_scan():
    """Train mode: every layer draws its own dropout mask and updates its own statistics."""
    lm = models.Transformer(3, 8, heads=2, ffn=12, dropout=0.5, alpha_init=0.5, param_dtype=F64,
                            rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 8), F64)
    counts = lambda: nnx.state(lm, nnx.RngCount)["blocks"]["layers"]["dropout"]["rngs"]["count"][...]  # noqa: E731
    before = np.asarray(counts())
    assert not np.allclose(lm(x), lm(x)), "fresh dropout masks on every call"
    np.testing.assert_array_equal(counts(), before + 4)  # 2 calls x 2 sublayers, every layer
    keys = nnx.state(lm, nnx.RngKey)["blocks"]["layers"]["dropout"]["rngs"]["key"][...]
    assert len({tuple(np.asarray(jax.random.key_data(k))) for k in keys}) == 3, "a stream per layer"

    net = models.ResNet(variant="residual", stages=(3,), width=4, param_dtype=F64,
                        rngs=nnx.Rngs(0))
    net(jax.random.normal(jax.random.key(2), (5, 6, 6, 3), F64))  # train mode: batch statistics
    mean = np.asarray(nnx.state(net, nnx.BatchStat)["blocks"][1]["layers"]["bn1"]["mean"][...])
    assert mean.shape == (2, 4) and np.all(mean != 0) and not np.allclose(mean[0], mean[1])


def test_padding_mask_reaches_every_layer():
    model = build("transformer", "prenorm")
    x = inputs("transformer")
    keep = jnp.array([True, True, False])
    h = model.embed(x)
    for block in model.unstacked_blocks():
        h = block(h, keep)
    np.testing.assert_allclose(model(x, padding_mask=keep), model.head(h), rtol=1e-12)


@pytest.mark.parametrize("remat", [True, "dots_saveable"])
def test_remat_and_unroll_change_nothing_but_the_schedule(remat):
    def net(**kw):
        return models.FullyConnected(6, 8, variant="residual", activation="tanh",
                                     param_dtype=F64, rngs=nnx.Rngs(0), **kw)

    x = jax.random.normal(jax.random.key(1), (8,), F64)
    reference = net()

    def grad(model):
        return jax.tree.leaves(nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    for other in (net(remat=remat), net(unroll=3)):
        np.testing.assert_allclose(other(x), reference(x), rtol=1e-13)
        for a, b in zip(grad(other), grad(reference)):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    text = str(jax.make_jaxpr(lambda v: jax.grad(lambda u: jnp.sum(net(remat=remat)(u)))(v))(x))
    assert "checkpoint" in text or "remat" in text
    with pytest.raises(ValueError, match="unknown remat policy"):
        net(remat="everything")


# --- programs whose size does not grow with depth ------------------------------------------

def count_equations(jaxpr) -> int:
    """Equations of a jaxpr, those of its sub-jaxprs (scan bodies, jit calls, …) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += count_equations(inner)
    return total


def _programs(name: str, depth: int) -> dict[str, int]:
    builders = {
        "fc": lambda: models.FullyConnected(depth, 6, variant="rezero", alpha_init=0.1,
                                            param_dtype=F64, rngs=nnx.Rngs(0)),
        "transformer": lambda: models.Transformer(depth, 8, heads=2, ffn=12, vocab_size=11,
                                                  causal=True, param_dtype=F64, rngs=nnx.Rngs(0)),
        "resnet": lambda: models.ResNet(variant="rezero", stages=(depth, depth), width=4,
                                        param_dtype=F64, rngs=nnx.Rngs(0)),
    }
    model = builders[name]()
    x = {"fc": jnp.ones((2, 6), F64), "transformer": jnp.ones((2, 5), jnp.int32),
         "resnet": jnp.ones((2, 6, 6, 3), F64)}[name]
    y = {"fc": jnp.zeros(2, jnp.int32), "transformer": jnp.zeros((2, 5), jnp.int32),
         "resnet": jnp.zeros(2, jnp.int32)}[name]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    step = make_train_step(graphdef, tx)
    counts = {
        "apply": count_equations(jax.make_jaxpr(lambda p, r, v: nnx.merge(graphdef, p, r)(v))(
            params, rest, x).jaxpr),
        "train_step": count_equations(jax.make_jaxpr(step)(params, rest, tx.init(params), x, y)
                                      .jaxpr),
    }
    model.eval()
    if name != "transformer":  # token ids: the stack's spectrum is what is taken
        apply_fn, state = iso.from_nnx(model)
        sfn = iso.spectrum_fn(apply_fn, "dense")
        counts["dense_spectrum"] = count_equations(jax.make_jaxpr(sfn)(state, x[0]).jaxpr)
    _, states_fn, state = iso.from_stack(model)
    x0 = model.embed(x[0])
    stack_fn = lambda s, v: nnx.merge(*nnx.split(model)[:1], s).stack(v)  # noqa: E731
    counts["stack_spectrum"] = count_equations(jax.make_jaxpr(iso.spectrum_fn(stack_fn, "dense"))(
        state, x0).jaxpr)
    counts["layerwise"] = count_equations(jax.make_jaxpr(iso.layerwise_spectrum_fn(states_fn))(
        state, x0).jaxpr)
    return counts


@pytest.mark.parametrize("name", ["fc", "transformer", "resnet"])
def test_program_size_is_the_same_at_depth_4_and_64(name):
    shallow, deep = _programs(name, 4), _programs(name, 64)
    assert shallow == deep, (shallow, deep)
    assert min(shallow.values()) >= 5


# --- ReZero at every depth ---------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 7, 64])
def test_rezero_at_alpha_zero_is_the_identity_at_every_depth(depth):
    # tanh: a ReLU branch of width 6 is identically 0 with probability 1/64 (then dL/dα = 0)
    net = models.FullyConnected(depth, 6, variant="rezero", activation="tanh", param_dtype=F64,
                                rngs=nnx.Rngs(depth))
    x = jax.random.normal(jax.random.key(0), (6,), F64)
    np.testing.assert_array_equal(iso.dense_jacobian(net, x), np.eye(6))
    target = jax.random.normal(jax.random.key(1), (6,), F64)
    grads = nnx.grad(lambda m: jnp.sum(m(x) * target))(net)["blocks"]["layers"]
    assert grads["alpha"][...].shape == (depth,) and np.all(grads["alpha"][...] != 0)
    assert np.all(grads["linear"]["kernel"][...] == 0) and np.all(grads["linear"]["bias"][...] == 0)


@pytest.mark.parametrize("name", REZERO_CASES)
def test_stacked_alpha_is_one_leaf_named_per_layer(name):
    model = build(name, "rezero", alpha_init=0.25)
    params = nnx.state(model, nnx.Param)
    names = list(iso.alpha_values(params))
    assert len(names) == model.num_blocks and len(set(names)) == len(names)
    stacked = [leaf for leaf, is_alpha in zip(jax.tree.leaves(params),
                                              jax.tree.leaves(iso.alpha_mask(params))) if is_alpha]
    assert sum(np.size(a) for a in stacked) == model.num_blocks
    assert all(float(v) == 0.25 for v in iso.alpha_values(params).values())


def test_thousand_layer_net_spectrum_and_training_steps():
    """1,000 layers in the test suite: one small program (compile time does not grow)."""
    depth, width = 1000, 8
    net = models.FullyConnected(depth, width, variant="rezero", alpha_init=0.01,
                                activation="tanh", param_dtype=F64, rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(1), (2, width), F64)
    spec = iso.spectrum_fn(apply_fn, "dense", batched=True)(params, x)
    assert spec.singular_values.shape == (2, width) and np.all(np.isfinite(spec.singular_values))
    # 1000 layers at α = 0.01: log σ spreads like √L·α (a random product near the identity)
    assert 0.5 < float(jnp.mean(spec.chi)) < 2.0
    net_cls = models.FullyConnected(depth, width, variant="rezero", out_features=3,
                                    param_dtype=F64, rngs=nnx.Rngs(0))
    graphdef, p, rest = nnx.split(net_cls, nnx.Param, ...)
    tx = optax.adagrad(0.01)
    step = make_train_step(graphdef, tx)
    opt_state, losses = tx.init(p), []
    labels = jnp.array([0, 2])
    for _ in range(3):
        p, rest, opt_state, metrics = step(p, rest, opt_state, x, labels)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    alphas = iso.alpha_values(p)
    assert len(alphas) == depth and all(float(a) != 0 for a in alphas.values())


def test_donated_training_step_aliases_its_buffers_and_computes_the_same():
    net = models.FullyConnected(4, 6, variant="rezero", alpha_init=0.1, out_features=3,
                                param_dtype=F64, rngs=nnx.Rngs(0))
    graphdef, p, rest = nnx.split(net, nnx.Param, ...)
    tx = optax.adagrad(0.1)
    x, y = jax.random.normal(jax.random.key(1), (4, 6), F64), jnp.array([0, 1, 2, 0])
    plain, donated = make_train_step(graphdef, tx), make_train_step(graphdef, tx, donate=True)
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    a = plain(copy(p), rest, tx.init(p), x, y)
    b = donated(copy(p), rest, tx.init(p), x, y)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)
    hlo = donated.lower(p, rest, tx.init(p), x, y).compile().as_text()
    assert "input_output_alias" in hlo
    assert "input_output_alias" not in plain.lower(p, rest, tx.init(p), x, y).compile().as_text()
