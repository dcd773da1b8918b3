"""`iso.tune_init`: the critical line of mean field for tanh FC nets, and χ = 1 reached within
the reported uncertainty on an FC tanh net, a ResNet without BatchNorm and a Transformer
encoder."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry import theory
from isometry.diagnosis._tune import Evaluator, objective

F64 = jnp.float64
CRITICAL = 1.760955  # docs/theory.md §1: tanh, σ_b² = 0.05


def _tanh_builder(width, depth):
    def build(sigma_w2, rngs):
        return models.FullyConnected(depth, width, variant="plain", activation="tanh",
                                     sigma_w2=sigma_w2, sigma_b2=0.05, param_dtype=F64, rngs=rngs)

    return build


def _tanh_input(width):
    q = theory.q_star("tanh", CRITICAL, 0.05)  # first pre-activations at variance q*
    x = jax.random.normal(jax.random.key(5), (width,), F64)
    return x * jnp.sqrt((q - 0.05) / CRITICAL * width) / jnp.linalg.norm(x)


def test_mean_field_tuning_is_the_critical_line():
    build = _tanh_builder(32, 8)
    r = iso.tune_init(build, "sigma_w2", _tanh_input(32), defaults={"sigma_w2": 1.0},
                      mean_field=dict(activation="tanh", sigma_b2=0.05), seeds=(0, 1))
    assert r.method == "mean_field" and r.stderr["sigma_w2"] == 0.0
    assert r.values["sigma_w2"] == pytest.approx(CRITICAL, rel=1e-6)
    assert r.defaults["sigma_w2"] == 1.0 and r.objective > r.default_objective
    assert set(r.spectra) == {"default", "tuned"}


def test_measured_tuning_lands_on_the_critical_line():
    """se(σ_w²*) ~ 1/√(L·N·n) from the spread of χ over nets; the bias of ln(mean χ) is
    O(Var/n) and far below it: the root must sit within 3 se of mean field's 1.760955."""
    width, depth = 256, 32
    r = iso.tune_init(_tanh_builder(width, depth), "sigma_w2", _tanh_input(width),
                      defaults={"sigma_w2": 1.0}, bracket=(1.0, 3.0), seeds=range(4))
    s, se = r.values["sigma_w2"], r.stderr["sigma_w2"]
    assert r.method == "measured" and 0 < se < 0.05
    assert abs(s - CRITICAL) <= 3 * se, (s, se)
    assert abs(r.objective) < 0.05 and r.default_objective < -3  # χ = 1 vs χ₁ = 0.76 per layer


def _check_reaches_chi_one(build, name, x, result, fresh_seeds):
    """ln(mean χ) on fresh nets at the tuned value is 0 within its sampling error plus the
    tuned value's own (the slope from the search's central difference)."""
    s, se_s = result.values[name], result.stderr[name]
    spectra = Evaluator(build, x, fresh_seeds, iso.dense()).spectra({**result.defaults, name: s})
    f, se_f, _ = objective(spectra, "chi")
    evals = sorted(result.evaluations)
    (s1, f1, _), (s2, f2, _) = min(zip(evals, evals[1:]),
                                   key=lambda pair: abs(pair[0][0] - s) + abs(pair[1][0] - s))
    slope = (f2 - f1) / (s2 - s1)
    assert abs(f) <= 3 * math.hypot(se_f, slope * se_s), (f, se_f, slope, se_s)


def test_tunes_alpha_of_a_resnet_without_batchnorm():
    """ReZero ResNet, no BatchNorm, two stages of one block: at α = 0 the first block keeps the stream but the
    stage change subsamples (χ = 1/4); α moves χ of ∂x_L/∂x_0 through 1."""
    def build(alpha_init, rngs):
        return models.ResNet(variant="rezero", stages=(1, 1), width=4, batchnorm=False,
                             alpha_init=alpha_init, param_dtype=F64, rngs=rngs)

    x = jax.random.normal(jax.random.key(5), (8, 8, 3), F64)
    r = iso.tune_init(build, "alpha_init", x, bracket=(0.01, 2.0), seeds=range(3))
    assert r.default_objective < -1 and 0 < r.stderr["alpha_init"] < 0.2
    _check_reaches_chi_one(build, "alpha_init", x, r, fresh_seeds=range(10, 13))


def test_tunes_the_layernorm_gain_of_a_transformer_encoder():
    """Post-Norm encoder; the builder scales every LayerNorm's γ by `ln_gain`."""
    def build(ln_gain, rngs):
        m = models.Transformer(4, 8, heads=2, ffn=16, variant="postnorm", param_dtype=F64,
                               rngs=rngs)
        for norm in (m.blocks.layers.norm1, m.blocks.layers.norm2):
            norm.scale[...] = norm.scale[...] * ln_gain
        return m

    x = jax.random.normal(jax.random.key(6), (6, 8), F64)
    r = iso.tune_init(build, "ln_gain", x, defaults={"ln_gain": 1.0}, seeds=range(3))
    assert r.stderr["ln_gain"] > 0 and r.values["ln_gain"] != 1.0
    _check_reaches_chi_one(build, "ln_gain", x, r, fresh_seeds=range(10, 13))


def test_isometry_target_and_errors():
    build, x = _tanh_builder(32, 8), _tanh_input(32)
    r = iso.tune_init(build, "sigma_w2", x, target="isometry", defaults={"sigma_w2": 0.5},
                      seeds=(0, 1))
    assert r.objective >= r.default_objective and r.objective > 0.1
    summary = r.to_dict()
    assert summary["tuned_spectrum"]["isometry_share"] == pytest.approx(
        float(np.mean(r.spectra["tuned"].isometry_share)))
    with pytest.raises(ValueError, match="target"):
        iso.tune_init(build, "sigma_w2", x, target="sharp", defaults={"sigma_w2": 1.0})
    with pytest.raises(ValueError, match="defaults"):
        iso.tune_init(build, "sigma_w2", x)
    with pytest.raises(ValueError, match="does not change sign"):
        iso.tune_init(build, "sigma_w2", x, bracket=(0.1, 0.2), seeds=(0, 1))
