"""`iso.diagnose`: every finding fires on a model with the problem and stays silent on one without;
phase and depth scale against mean field; rank-collapse measures and the attention gap on
hand-built inputs; the command line."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry import plot, theory
from isometry.diagnosis._diagnose import FINDING_CODES, attention_gap, growth_rate, token_statistics
from isometry.diagnosis._programs import cached_jit, module_fns
from isometry.cli import main

F64 = jnp.float64


def _x(n, seed=1, dtype=F64, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), (n,), dtype)


def _fc(variant="plain", activation="tanh", sigma_w2=0.5, alpha_init=0.0, dtype=F64, depth=16,
        width=32, seed=0, **kw):
    return models.FullyConnected(depth, width, variant=variant, activation=activation,
                                 sigma_w2=sigma_w2, alpha_init=alpha_init, param_dtype=dtype,
                                 rngs=nnx.Rngs(seed), **kw)


def _with_alpha(values):
    net = _fc("rezero", "relu", 2.0)
    net.blocks.layers.alpha[...] = jnp.asarray(values, F64)
    return net


def _dead():
    net = _fc("rezero", "relu", 2.0)  # α = 0 and F(x) = relu(0·x + 0) = 0
    net.blocks.layers.linear.kernel[...] = jnp.zeros_like(net.blocks.layers.linear.kernel[...])
    return net


def _transformer(variant, seed=0, **kw):
    return models.Transformer(12, 8, heads=2, ffn=16, variant=variant, param_dtype=F64,
                              rngs=nnx.Rngs(seed), **kw)


def _seq(seed=0):
    return jax.random.normal(jax.random.key(seed), (6, 8), F64)


# name -> (model, input): built and diagnosed once each
MODELS = {
    "tanh_ordered": lambda: (_fc(), _x(32)),
    "tanh_ordered_f32": lambda: (_fc(dtype=jnp.float32), _x(32, dtype=jnp.float32)),
    # biases keep the activations O(1) while backpropagated signals shrink by √χ₁ per layer
    "tanh_with_bias": lambda: (_fc(sigma_w2=0.3, sigma_b2=0.1), _x(32)),
    "relu_chaotic": lambda: (_fc(activation="relu", sigma_w2=4.0), _x(32)),
    "rezero_identity": lambda: (_fc("rezero", "relu", 2.0), _x(32)),
    "rezero_small": lambda: (_fc("rezero", "relu", 2.0, alpha_init=0.1), _x(32)),
    "dead_branch": lambda: (_dead(), _x(32)),
    "negative_alpha": lambda: (_with_alpha(np.linspace(-0.2, 0.3, 16)), _x(32)),
    "inactive_alpha": lambda: (_with_alpha([0.5] * 8 + [1e-4] * 8), _x(32)),
    "trained_alpha": lambda: (_with_alpha(np.linspace(0.1, 0.5, 16)), _x(32)),
    "overflow": lambda: (_fc(activation="linear", sigma_w2=1e8, dtype=jnp.float32),
                         _x(32, dtype=jnp.float32)),
    "linear_f32": lambda: (_fc(activation="linear", sigma_w2=1.0, dtype=jnp.float32),
                           _x(32, dtype=jnp.float32)),
    "postnorm": lambda: (_transformer("postnorm"), _seq()),
    "postnorm_seed2": lambda: (_transformer("postnorm", seed=2), _seq(2)),
    "rezero_transformer": lambda: (_transformer("rezero"), _seq()),
}


@functools.lru_cache(maxsize=None)
def diagnosis(name):
    model, x = MODELS[name]()
    return iso.diagnose(model, x)


# code -> (model that has the problem, model that does not)
CASES = {
    "nonfinite": ("overflow", "linear_f32"),
    "ordered": ("tanh_ordered", "rezero_identity"),
    "chaotic": ("relu_chaotic", "rezero_identity"),
    "resolution": ("tanh_ordered_f32", "rezero_identity"),
    "dead_branch": ("dead_branch", "rezero_identity"),
    "negative_alpha": ("negative_alpha", "trained_alpha"),
    "inactive_alpha": ("inactive_alpha", "trained_alpha"),
    "gradient_spread": ("tanh_with_bias", "rezero_small"),
    "rank_collapse": ("postnorm", "postnorm_seed2"),
    "attention_rank_one": ("postnorm", "rezero_transformer"),
}


def test_every_finding_has_a_case():
    assert set(CASES) == set(FINDING_CODES)


@pytest.mark.parametrize("code", list(CASES))
def test_finding_fires_on_the_problem_and_is_silent_without(code):
    bad, good = CASES[code]
    found = [f for f in diagnosis(bad).findings if f.code == code]
    assert len(found) == 1, (code, diagnosis(bad).codes)
    f = found[0]
    assert f.message and f.suggestion and (math.isfinite(f.value))
    assert code not in diagnosis(good).codes, (code, diagnosis(good).table())


def test_dead_branch_numbers():
    d = diagnosis("dead_branch")
    assert all(float(v) == 0.0 for v in d.alpha_grads.values())
    assert all(v == 0.0 for k, v in d.layer_grad_norms.items() if k.startswith("blocks/"))
    assert d.findings[0].value == 16
    # α = 0 on a live branch: ∂L/∂α = F(x)·∂L/∂x ≠ 0, so the model is not dead
    live = diagnosis("rezero_identity")
    assert all(abs(float(v)) > 0 for v in live.alpha_grads.values())
    assert live.phase == "critical" and live.growth_rate == 0.0  # J = I exactly


def test_dead_branch_depends_on_the_branch_derivative_at_zero():
    """Zero weights with α = 1e-3: a tanh branch still passes gradient (tanh′(0) = 1), a ReLU
    branch does not (ReLU′(0) = 0 in JAX), whatever α."""
    def zero_branch(activation):
        net = _fc("rezero", activation, 1.0, alpha_init=1e-3)
        kernel = net.blocks.layers.linear.kernel
        kernel[...] = jnp.zeros_like(kernel[...])
        return net

    assert "dead_branch" not in iso.diagnose(zero_branch("tanh"), _x(32)).codes
    (f,) = [f for f in iso.diagnose(zero_branch("relu"), _x(32)).findings
            if f.code == "dead_branch"]
    assert "α alone cannot revive" in f.suggestion and f.value == 16


def test_suggestion_names_the_critical_sigma_w2():
    net, x = _fc(sigma_b2=0.05, sigma_w2=1.0), _x(32, scale=0.5)
    d = iso.diagnose(net, x, mean_field=dict(activation="tanh", sigma_w2=1.0, sigma_b2=0.05))
    (f,) = [f for f in d.findings if f.code == "ordered"]
    assert "σ_w² = 1.761 puts χ₁ at 1" in f.suggestion
    assert d.theory["depth_scale"] == pytest.approx(theory.depth_scales("tanh", 1.0, 0.05)[0])


def test_rezero_overlay_from_residual_theory():
    """ReZero ReLU nets at α = 0.3, width 256, 3 seeds: the theory diagnose overlays is
    `theory_residual`'s; the measured χ of the bulk (all σ but the top one, the outlier of ReLU
    residual nets) matches it within 4 se over nets plus one bulk value σ₂²/N."""
    from isometry import theory as theory_residual

    width, depth, bulk, top2 = 256, 16, [], []
    for seed in range(3):
        net = _fc("rezero", "relu", 2.0, alpha_init=0.3, width=width, depth=depth, seed=seed)
        d = iso.diagnose(net, _x(width, seed=seed),
                         mean_field=dict(activation="relu", sigma_w2=2.0, alpha=0.3))
        s = np.asarray(d.spectrum.singular_values, np.float64)
        bulk.append(np.sum(s[1:] ** 2) / width)
        top2.append(s[1] ** 2 / width)
        assert d.phase == d.theory["phase"] == "chaotic"
    m1 = theory_residual.residual_m1("relu", depth, 0.3, 2.0)
    assert d.theory["growth_rate"] == pytest.approx(math.log(m1) / depth, rel=1e-12)
    assert d.theory["nvar"] == pytest.approx(theory_residual.residual_nvar("relu", depth, 0.3, 2.0))
    mean, se = theory.mean_and_sem(bulk)
    assert abs(mean - m1) <= 4 * se + max(top2), (mean, se, m1)


def test_rezero_sigma_panel_overlays_the_predicted_density():
    """With mean_field α, diagnose carries `theory_residual`'s density and panel (b) draws it."""
    from isometry import theory as theory_residual

    net = _fc("rezero", "relu", 2.0, alpha_init=0.3, width=64, depth=8)
    d = iso.diagnose(net, _x(64), mean_field=dict(activation="relu", sigma_w2=2.0, alpha=0.3))
    want = theory_residual.density_points(theory_residual.residual_density("relu", 8, 0.3, 2.0))
    np.testing.assert_array_equal(d.theory["density"]["density"], want["density"])
    labels = [line.get_label() for line in d.figure().axes[1].get_lines()]
    assert "theory (residual net, bulk)" in labels
    json.dumps(d.to_dict(), allow_nan=False)


# --- phase and depth scale against mean field ------------------------------------------------

WIDTH, DEPTH, SEEDS = 256, 24, 3
POINTS = [("tanh", 1.0, 0.05, "ordered"), ("tanh", 1.760955, 0.05, "critical"),
          ("tanh", 3.0, 0.05, "chaotic"), ("relu", 1.5, 0.05, "ordered"),
          ("relu", 2.0, 0.0, "critical"), ("relu", 2.6, 0.0, "chaotic")]


@pytest.mark.parametrize("activation,sigma_w2,sigma_b2,phase", POINTS)
def test_phase_and_depth_scale_agree_with_mean_field(activation, sigma_w2, sigma_b2, phase):
    """g = ln χ₁ within 4 standard errors (over layers and nets) plus a finite-width bias
    allowance of 2/N (E ln of a per-layer ratio with relative variance ~2/N is ln χ₁ − 1/N);
    ξ = 1/|g| within the propagated error; the phase of every net equals mean field's."""
    # ReLU: χ₁ = σ_w²/2 whatever q (theory.chi_1 asks for a finite q*, absent at σ_w² > 2)
    chi1 = sigma_w2 / 2 if activation == "relu" else theory.chi_1(activation, sigma_w2, sigma_b2)
    try:
        q = theory.q_star(activation, sigma_w2, sigma_b2)
    except ValueError:
        q = sigma_w2  # ReLU without fixed point: J does not depend on the input's scale
    rates, errors = [], []
    for seed in range(SEEDS):
        net = _fc(activation=activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2, depth=DEPTH,
                  width=WIDTH, seed=seed)
        x = _x(WIDTH, seed=100 + seed)
        x = x * jnp.sqrt(max(q - sigma_b2, 1e-3) / sigma_w2 * WIDTH) / jnp.linalg.norm(x)
        d = iso.diagnose(net, x, burn_in=2)
        assert d.phase == phase, (seed, d.growth_rate, d.growth_rate_stderr)
        rates.append(d.growth_rate)
        errors.append(d.growth_rate_stderr)
    g = float(np.mean(rates))
    se = math.sqrt(float(np.mean(np.square(errors))) / SEEDS)
    tol = 4 * se + 2 / WIDTH
    assert abs(g - math.log(chi1)) <= tol, (g, math.log(chi1), se)
    if phase != "critical":
        xi_theory = 1 / abs(math.log(chi1))
        assert abs(1 / abs(g) - xi_theory) <= tol / g ** 2, (1 / abs(g), xi_theory)
        if phase == "ordered":  # in the ordered phase this is theory's ξ_c
            assert xi_theory == pytest.approx(theory.depth_scales(activation, sigma_w2,
                                                                  sigma_b2)[0], rel=1e-6)


def test_growth_rate_of_an_exact_geometric_profile():
    g, se = growth_rate(0.8 ** np.arange(11))
    assert g == pytest.approx(math.log(0.8), rel=1e-12) and se == pytest.approx(0, abs=1e-12)


# --- rank collapse and the attention gap ------------------------------------------------------


def test_rank_collapse_measures_on_identical_and_orthogonal_tokens():
    T, d = 8, 32
    token = jax.random.normal(jax.random.key(0), (d,), F64)
    same = token_statistics(jnp.tile(token, (T, 1)))
    assert same["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert same["inverse_stable_rank"] == pytest.approx(1.0, abs=1e-12)
    assert same["rank_one_residual"] == pytest.approx(0.0, abs=1e-12)
    q = jax.random.orthogonal(jax.random.key(1), d, dtype=F64)[:T] * 3.0
    ortho = token_statistics(q)
    assert ortho["cosine"] == pytest.approx(0.0, abs=1e-12)
    assert ortho["inverse_stable_rank"] == pytest.approx(1 / T, rel=1e-12)
    assert ortho["stable_rank"] == pytest.approx(T, rel=1e-12)
    assert ortho["rank_one_residual"] == pytest.approx(math.sqrt(1 - 1 / T), rel=1e-12)
    # independent Gaussian tokens: cosines ~ N(0, 1/d), so the mean of the T(T−1)/2 distinct
    # pairs has sd 1/√(d·T(T−1)/2); 1/stable rank sits near 1/T (within the MP edge factor)
    g = token_statistics(jax.random.normal(jax.random.key(2), (16, T, 512), F64))
    assert abs(g["cosine"]) < 5 / math.sqrt(512 * T * (T - 1) / 2 * 16)
    assert 1 / T < g["inverse_stable_rank"] < (1 + math.sqrt(T / 512)) ** 2 / T


def test_attention_gap_of_hand_built_matrices():
    T, eps = 6, 0.3
    uniform = np.full((T, T), 1 / T)
    mixed = (1 - eps) * np.eye(T) + eps * uniform  # eigenvalues 1 (on 1) and 1 − ε, symmetric
    s, ratio = attention_gap(np.stack([uniform, np.eye(T), mixed]))
    np.testing.assert_allclose(s, [[1, 0], [1, 1], [1, 1 - eps]], atol=1e-12)
    np.testing.assert_allclose(ratio, [0, 1, 1 - eps], atol=1e-12)


def test_transformer_attention_weights_match_its_attention():
    net, x = MODELS["postnorm"]()
    graphdef, state = nnx.split(net)
    w = cached_jit(module_fns(graphdef)["attention"])(state, x)  # the function diagnose compiled
    assert w.shape == (12, 2, 6, 6)
    np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, atol=1e-12)
    layer = net.blocks.layer(0)
    att = layer.attention
    v = att.qkv(x).reshape(6, 3, 2, 4)[:, 2]
    y = att.out(jnp.einsum("hqk,khd->qhd", w[0], v).reshape(6, 8))
    np.testing.assert_allclose(np.asarray(y), np.asarray(att(x)), atol=1e-12)
    d = diagnosis("postnorm")
    _, ratio = attention_gap(np.asarray(w))
    np.testing.assert_allclose(d.attention_ratio, ratio.mean(axis=1), atol=1e-12)


# --- outputs ---------------------------------------------------------------------------------


def test_json_table_and_figure(tmp_path):
    d = diagnosis("postnorm")
    doc = d.to_dict()
    json.dumps(doc, allow_nan=False)
    assert [f["code"] for f in doc["findings"]] == d.codes
    assert len(doc["token_cosine"]) == 13 and "rank_collapse" in d.table()
    path = plot.save(d.figure(), tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 10_000 and path.endswith("d.png")


def test_plain_function_gets_the_whole_network_part():
    w = jax.random.normal(jax.random.key(3), (16, 16), F64) / 4

    def apply_fn(params, x):
        return jnp.tanh(params["w"] @ x)

    d = iso.diagnose(apply_fn, {"w": w}, _x(16))
    assert d.spectrum is not None and d.phase == "" and d.chi_profile is None
    assert d.layer_grad_norms["w"] > 0


def test_cli_diagnose(tmp_path, capsys):
    rc = main(["diagnose", "--model", "fc", "--variant", "plain", "--activation", "tanh",
               "--width", "32", "--depth", "16", "--sigma-w2", "1", "--sigma-b2", "0.05",
               "--x64", "--burn-in", "2", "--out", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    codes = [f["code"] for f in doc["diagnosis"]["findings"]]
    assert "ordered" in codes and doc["diagnosis"]["phase"] == "ordered"
    assert (tmp_path / "diagnosis.png").exists() and (tmp_path / "diagnosis.json").exists()
    assert main(["diagnose", "--variant", "plain,rezero", "--out", str(tmp_path)]) == 2
