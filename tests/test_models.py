"""The suite every model in `models/` passes, in every variant.

A model joins with one line in `MODELS`: how to build a tiny instance from (variant, alpha_init,
rngs), its variants, and the shapes of one input and one output. Sizes are tiny (CPU, float64).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from models import fully_connected, resnet, transformer

F64 = jnp.float64


@dataclasses.dataclass(frozen=True)
class ModelCase:
    build: Callable[[str, float, nnx.Rngs], nnx.Module]
    variants: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


MODELS = {
    "fc": ModelCase(lambda v, a, rngs: models.FullyConnected(
        2, 6, variant=v, alpha_init=a, param_dtype=F64, rngs=rngs),
        fully_connected.VARIANTS, (6,), (6,)),
    # one stage, so that every block keeps the shape (the stack can be the identity)
    "resnet": ModelCase(lambda v, a, rngs: models.ResNet(
        variant=v, stages=(2,), width=4, alpha_init=a, param_dtype=F64, rngs=rngs),
        resnet.VARIANTS, (6, 6, 3), (10,)),
    "transformer": ModelCase(lambda v, a, rngs: models.Transformer(
        2, 8, heads=2, ffn=12, variant=v, alpha_init=a, param_dtype=F64, rngs=rngs),
        transformer.VARIANTS, (3, 8), (3, 8)),
}

CASES = [pytest.param(name, v, id=f"{name}-{v}") for name, case in MODELS.items()
         for v in case.variants]
REZERO_CASES = [pytest.param(name, id=name) for name, case in MODELS.items()
                if "rezero" in case.variants]


def build(name: str, variant: str, alpha_init: float = 0.1, seed: int = 0) -> nnx.Module:
    """A model in eval mode (BatchNorm running averages, no dropout), as Jacobians take it."""
    has_alpha = variant in {"fc": fully_connected, "resnet": resnet,
                            "transformer": transformer}[name].ALPHA_VARIANTS
    model = MODELS[name].build(variant, alpha_init if has_alpha else 0.0, nnx.Rngs(seed))
    model.eval()
    return model


def inputs(name: str, batch: tuple[int, ...] = (), seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (*batch, *MODELS[name].input_shape), F64)


def perturbed(state):
    """Every floating leaf shifted by 0.01 (integer RNG counters and keys untouched)."""
    def shift(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return leaf + 0.01
        return leaf
    return jax.tree.map(shift, state)


@pytest.mark.parametrize("name,variant", CASES)
def test_jitted_apply_shape_finite_no_recompile(name, variant):
    apply_fn, params = iso.from_nnx(build(name, variant))
    traces = []

    @jax.jit
    def f(params, x):
        traces.append(1)
        return apply_fn(params, x)

    x = inputs(name, batch=(2,))
    y = f(params, x)
    assert y.shape == (2, *MODELS[name].output_shape)
    assert y.dtype == F64
    assert np.all(np.isfinite(y))
    y2 = f(perturbed(params), x)
    assert len(traces) == 1, "new parameter values of the same shapes must not retrace"
    assert np.all(np.isfinite(y2))


@pytest.mark.parametrize("name,variant", CASES)
def test_init_is_deterministic_in_the_seed(name, variant):
    def params(seed):
        return jax.tree.leaves(nnx.state(build(name, variant, seed=seed), nnx.Param))

    a, b, c = params(0), params(0), params(1)
    assert len(a) == len(b) == len(c) > 0
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, w) for u, w in zip(a, c)), "a new seed must change weights"


@pytest.mark.parametrize("name,variant", CASES)
def test_jacobian_spectrum_is_finite(name, variant):
    apply_fn, params = iso.from_nnx(build(name, variant))
    spec = iso.spectrum_fn(apply_fn, "dense")(params, inputs(name))
    n_in = int(np.prod(MODELS[name].input_shape))
    n_out = int(np.prod(MODELS[name].output_shape))
    s = np.asarray(spec.singular_values)
    assert (spec.n_in, spec.n_out) == (n_in, n_out)
    assert s.shape == (min(n_in, n_out),)
    assert int(spec.n_nonfinite) == 0 and np.all(np.isfinite(s))
    assert np.all(np.diff(s) <= 0) and s[-1] >= 0
    # χ = ‖J‖_F²/n_in, J by plain reverse-mode autodiff here (not the engine's σ)
    x = inputs(name)
    jac = jax.jacrev(lambda v: apply_fn(params, v.reshape(x.shape)).ravel())(x.ravel())
    np.testing.assert_allclose(spec.chi, np.sum(np.asarray(jac) ** 2) / n_in, rtol=1e-10)


@pytest.mark.parametrize("name", REZERO_CASES)
def test_rezero_at_alpha_zero_stack_is_identity(name):
    model = build(name, "rezero", alpha_init=0.0)
    x0 = model.embed(inputs(name))
    jac = iso.dense_jacobian(model.stack, x0)
    np.testing.assert_array_equal(jac, np.eye(x0.size))


@pytest.mark.parametrize("name", REZERO_CASES)
def test_rezero_at_alpha_zero_only_alpha_gets_gradient(name):
    model = build(name, "rezero", alpha_init=0.0)
    x0 = model.embed(inputs(name))
    target = jax.random.normal(jax.random.key(2), x0.shape, F64)

    def loss(model):
        return jnp.sum(model.stack(x0) * target)

    grads = nnx.state(nnx.grad(loss)(model))
    is_alpha = jax.tree.leaves(iso.alpha_mask(grads))
    leaves = jax.tree.leaves(grads)
    alpha_grads = [g for g, a in zip(leaves, is_alpha) if a]
    other_grads = [g for g, a in zip(leaves, is_alpha) if not a]
    assert len(iso.alpha_values(grads)) == len(model.unstacked_blocks())
    assert all(np.all(np.asarray(g) != 0) for g in alpha_grads), "every α must get a gradient"
    assert other_grads and all(np.all(np.asarray(g) == 0) for g in other_grads), \
        "branch weights get no gradient while α = 0"


# --- one frozen configuration per model ---------------------------------------------------

CONFIGS = {
    "fc": (models.FullyConnectedConfig(2, 6, variant="norm", param_dtype=F64),
           models.FullyConnected),
    "resnet": (models.ResNetConfig(variant="fixup", stages=(2,), width=4, param_dtype=F64),
               models.ResNet),
    "transformer": (models.TransformerConfig(2, 8, heads=2, ffn=12, variant="rezero",
                                             layernorm=True, param_dtype=F64),
                    models.Transformer),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_builds_the_model_its_keywords_build(name):
    config, cls = CONFIGS[name]
    from_config = cls.from_config(config, rngs=nnx.Rngs(0))
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    from_keywords = cls(**fields, rngs=nnx.Rngs(0))
    assert from_config.config == from_keywords.config == config
    for a, b in zip(jax.tree.leaves(nnx.state(from_config, nnx.Param)),
                    jax.tree.leaves(nnx.state(from_keywords, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.variant = "plain"
    resolved = config.resolved()
    assert resolved.resolved() == resolved
    assert None not in [getattr(resolved, f) for f in ("sigma_w2", "stages", "width", "shortcut",
                                                         "batchnorm", "layernorm")
                        if hasattr(resolved, f)]


def test_config_checks_its_settings_when_made():
    with pytest.raises(ValueError, match="unknown FullyConnected variant"):
        models.FullyConnectedConfig(2, 6, variant="gated")
    with pytest.raises(ValueError, match="6n\\+2"):
        models.ResNetConfig(21)
    with pytest.raises(ValueError, match="must divide d_model"):
        models.TransformerConfig(1, 10, heads=3, ffn=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'widht'"):
        models.FullyConnected(2, widht=6, width=6, rngs=nnx.Rngs(0))

