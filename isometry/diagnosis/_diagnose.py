"""Diagnose a model's signal propagation: what the spectrum says, why, and what to change.

`diagnose(apply_fn, params, x)` measures, for any model:

* the spectrum of J = ∂x_L/∂x_0 (the stack's Jacobian for an `isometry.LayerStack`, the whole
  function's otherwise): χ = ‖J‖_F²/n_in and the σ summary, and the share of σ below the
  dtype's resolution, σ < σ_max · max(n_in, n_out) · ε (numpy's rank tolerance: an SVD in that
  dtype cannot tell these σ from 0);
* for a layer stack, the profile χ_l = ‖∂x_l/∂x_0‖_F²/n_0 and its growth rate per layer

      g = mean_l [ln χ_{l+1} − ln χ_l] = (ln χ_L − ln χ_b)/(L − b),   se(g) = sd_l/√(L − b),

  over the layers l ≥ b (`burn_in`); in a plain net at its fixed point g = ln χ₁ (mean field,
  E[m₁] = χ₁^L), the increments being nearly independent across layers (a random walk in
  ln χ_l, Lyapunov-like exponent g). The phase is ordered (g < 0), critical or chaotic
  (g > 0): critical when χ changes by less than a factor 2 over the stack (|g|·L ≤ ln 2), or
  by less than a factor 10 with g within 3 se(g) of 0. The depth scale ξ = 1/|g| is the
  number of layers over which χ_l changes by a factor e (Schoenholz et al. 2017: ξ_∇ = −1/ln χ₁
  for gradients; it equals `theory.depth_scales`' ξ_c in the ordered phase);
* every residual weight α (leaves named `alpha`) and ∂loss/∂α, and the gradient norm of every
  layer's parameters (a loss of the output: by default ½·mean (y − t)² with a fixed random
  target t);
* for token streams (each x_l of shape (T, d)): at every depth the mean cosine similarity of
  distinct tokens, the stable rank ‖X‖_F²/‖X‖_2² ∈ [1, T] and its inverse (1 for identical
  tokens, 1/T for orthogonal ones), and the rank-one residual ‖X − 1x̄ᵀ‖_F/‖X‖_F (Dong et al.
  2021; Noci et al. 2022); for models with `attention_weights(x0)` (`models.Transformer`) the
  top two singular values σ₁ ≥ σ₂ of every attention matrix and their ratio σ₂/σ₁ (a gap
  σ₁ − σ₂ → σ₁ means rank-one, token-averaging attention; Naderi et al. 2025).

It ends with `findings`: each one a problem in plain words, the number behind it and a change to
try. Every finding has a test that it fires on a model with the problem and stays silent on
one without (tests/test_diagnose.py).

Findings (code: fires when — each with its number and a suggested change):

* nonfinite: the output has NaN/Inf entries (nothing else is measured).
* ordered / chaotic: the phase from the growth rate g of ln χ_l is not critical (see
  `phase_of`); with `mean_field` the suggestion names the critical σ_w².
* resolution: more than 1% of σ(J) are below the dtype's resolution.
* dead_branch: every gradient of a gated layer l (∂L/∂α_l and the branch's) is 0 — a zero gate
  on a branch whose output is identically 0, or a branch with zero output and zero derivative
  (ReLU of 0) at any α: nothing in the layer moves.
* negative_alpha: some α_l < 0.
* inactive_alpha: α's differ (a trained model) and some |α_l| < 1% of max |α|.
* gradient_spread: per-layer gradient norms of the stacked layers span > 3 decades.
* rank_collapse: mean token cosine ≥ 0.9 at x_L while < 0.9 at x_0.
* attention_rank_one: in at least half of the layers the attention's mean σ₂/σ₁ < 0.1.

Example:
    >>> import jax, models
    >>> from flax import nnx
    >>> net = models.FullyConnected(32, 64, variant="plain", activation="tanh", sigma_w2=1.0,
    ...                             sigma_b2=0.05, rngs=nnx.Rngs(0))
    >>> d = diagnose(net, x=jax.random.normal(jax.random.key(1), (64,)) * 0.5,
    ...              mean_field=dict(activation="tanh", sigma_w2=1.0, sigma_b2=0.05))
    >>> d.phase, d.codes[0], round(d.theory["depth_scale"], 2)      # ξ = −1/ln 0.759
    ('ordered', 'ordered', 3.63)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isometry import theory
from isometry.diagnosis._findings import (FINDING_CODES, Finding, alpha_findings,
                                         attention_finding, gradient_spread_finding,
                                         nonfinite_finding, phase_finding, rank_collapse_finding,
                                         resolution_finding, sort_findings)
from isometry.diagnosis._programs import (cached_jit, dense_spectrum_fn, float_grad,
                                    group_norms, last_state_fn, layerwise_fns, module_fns)
from isometry.diagnosis._measures import (attention_gap, growth_rate, phase_of, resolution_share,
                                         token_statistics)
from isometry.diagnosis._result import Diagnosis, empty_diagnosis
from isometry.linalg._jacobian import JacobianTooLargeError, output_shape
from isometry.linalg._memory import memory_budget_of
from isometry.spectrum._engine import Auto, Dense, dense_settings
from isometry.spectrum._layerwise import depth_profile, state_runs
from isometry._numerics import check_setting
from isometry._params import alpha_values
from isometry.spectrum._function import Spectrum
from isometry._stack import LayerStack

__all__ = ["Diagnosis", "Finding", "diagnose", "token_statistics", "attention_gap",
           "growth_rate", "resolution_share", "FINDING_CODES"]


def mean_field_theory(spec: dict, n_layers: int) -> dict:
    """The prediction `mean_field=` asks for: χ₁ and ξ of a plain FC net (mean field), or of a
    ReZero FC net x + α φ(Wx + b) when `spec` has "alpha" (free probability)."""
    activation = spec["activation"]
    sw2, sb2 = float(spec["sigma_w2"]), float(spec.get("sigma_b2", 0.0))
    out = dict(activation=activation, sigma_w2=sw2, sigma_b2=sb2)
    if spec.get("alpha") is not None:
        alpha, depth, q0 = float(spec["alpha"]), max(n_layers, 1), float(spec.get("q0", 1.0))
        m1 = theory.residual_m1(activation, depth, alpha, sw2, sb2, q0=q0)
        g = math.log(m1) / depth
        out.update(alpha=alpha, chi_1=math.exp(g))
    else:
        out["chi_1"] = theory.chi_1(activation, sw2, sb2)
        g = math.log(out["chi_1"])
    out.update(growth_rate=g, depth_scale=1 / abs(g) if g else math.inf,
               phase=phase_of(g, 0.0, n_layers) if n_layers else "")
    if spec.get("alpha") is not None:
        out.update(nvar=theory.residual_nvar(activation, depth, alpha, sw2, sb2, q0=q0),
                   critical_sigma_w2=math.nan, density=_residual_density(out, depth, q0))
        return out
    try:
        out["critical_sigma_w2"] = theory.critical_sigma_w2(activation, sb2)
    except ValueError:
        out["critical_sigma_w2"] = math.nan
    return out


def _residual_density(spec: dict, depth: int, q0: float) -> dict | None:
    """The predicted density of log10 σ of a ReZero FC net (None where it cannot be had)."""
    try:
        return theory.density_points(theory.residual_density(
            spec["activation"], depth, spec["alpha"], spec["sigma_w2"], spec["sigma_b2"], q0=q0))
    except (FloatingPointError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class _Profile:
    """What the Jacobians measured: χ_l by depth (with a stack) and the spectrum of J."""

    n_layers: int = 0
    chi: np.ndarray | None = None
    chi_err: np.ndarray | None = None
    quantiles: np.ndarray | None = None
    spectrum: Spectrum | None = None
    states: Any = None


def _dense_or_none(fn: Callable, engine: Dense, params, x) -> Spectrum | None:
    try:
        return dense_spectrum_fn(fn, engine)(params, x)
    except JacobianTooLargeError:
        return None


def _stack_profile(states_fn, params, x0, engine: Dense, num_probes, key) -> _Profile:
    """χ_l of every ∂x_l/∂x_0 (dense when it fits, else Hutchinson) and the spectrum of J."""
    states = cached_jit(states_fn)(params, x0)
    runs = state_runs(states)
    n_layers = sum(r.shape[0] for r in runs) - len(runs)
    n_total = sum(int(np.size(r)) for r in runs)
    fns = layerwise_fns(states_fn, engine.memory_budget, num_probes)
    dense_bytes = 3 * int(np.size(x0)) * n_total * jnp.dtype(runs[-1].dtype).itemsize
    if dense_bytes > memory_budget_of(engine.memory_budget):
        chi, err = fns["chi"](params, x0, key)
        spec = _dense_or_none(last_state_fn(states_fn), engine, params, x0)
        return _Profile(n_layers, np.asarray(chi, np.float64), np.asarray(err, np.float64),
                        None, spec, states)
    prof = fns["spectrum"](params, x0)
    dp = depth_profile(prof)
    last = state_runs(prof)[-1]
    top = jax.tree.map(lambda a: a[-1], last) if last.singular_values.ndim > 1 else last
    spec = Spectrum(top.singular_values, top.chi, top.n_nonfinite, last.n_in, last.n_out)
    return _Profile(n_layers, dp["chi"], np.zeros_like(dp["chi"]), dp["log10_sigma_quantiles"],
                    spec, states)


def _phase(profile: _Profile, burn_in: int) -> tuple[float, float, str, float, float]:
    """(g, se(g), phase, ξ, se(ξ)) from the χ_l profile (nan and "" without one)."""
    if profile.chi is None or profile.n_layers < 1:
        return math.nan, math.nan, "", math.nan, math.nan
    g, g_se = growth_rate(profile.chi, burn_in=burn_in)
    if profile.n_layers - burn_in == 1 or not math.isfinite(g_se):
        g_se = 0.0
    xi = 1 / abs(g) if g else math.inf
    xi_se = g_se / g ** 2 if g else math.inf
    return g, g_se, phase_of(g, g_se, profile.n_layers), xi, xi_se


def _tokens(states, tokens: bool | None) -> dict:
    """Token statistics by depth when each x_l is a (T, d) sequence, else Nones."""
    out = dict(cosine=None, inverse_stable_rank=None, stable_rank=None, rank_one_residual=None)
    if states is None or isinstance(states, tuple):
        return out
    per = states.ndim - 1
    if ((per == 2) if tokens is None else tokens) and per >= 2:
        rows = [token_statistics(states[l]) for l in range(states.shape[0])]
        out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return out


def _attention(attention_fn, params, x0) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(L, 2) mean top-two σ of each layer's attention matrices and (L,) mean σ₂/σ₁."""
    if attention_fn is None:
        return None, None
    s, r = attention_gap(np.asarray(cached_jit(attention_fn)(params, x0), np.float64))
    return s.reshape(s.shape[0], -1, 2).mean(axis=1), r.reshape(r.shape[0], -1).mean(axis=1)


def _from_module(module, params, x, fns: dict):
    """(apply_fn, params, x, fns) for an `nnx.Module`; `fns` gains its stack functions."""
    if x is None:
        x, params = params, None
    training = [type(m).__name__ for _, m in nnx.iter_modules(module)
                if (isinstance(m, nnx.BatchNorm) and not m.use_running_average)
                or (isinstance(m, nnx.Dropout) and not m.deterministic and m.rate > 0)]
    if training:
        raise ValueError(f"the module is in train mode ({', '.join(sorted(set(training)))} "
                         f"included): a Jacobian through it would update BatchNorm statistics "
                         f"and draw dropout masks; call module.eval() first (and "
                         f"isometry.calibrate_batchnorm(module, x) for statistics of data)")
    graphdef, params = nnx.split(module)
    pure = module_fns(graphdef)
    if isinstance(module, LayerStack) and fns["states_fn"] is None:
        fns.update(states_fn=pure["states"], embed_fn=pure["embed"])
        if fns["attention_fn"] is None and hasattr(module, "attention_weights"):
            fns["attention_fn"] = pure["attention"]
    return pure["apply"], params, x, fns


def _output_and_grads(apply_fn, loss_fn, params, x, key):
    """The output and ∂loss/∂params (default loss: ½·mean (y − t)², t ~ N(0, 1) fixed)."""
    shapes = output_shape(lambda xx: apply_fn(params, xx), x)
    target = jax.tree.map(lambda a: jax.random.normal(jax.random.fold_in(key, 1), a.shape,
                                                      a.dtype), shapes)
    return float_grad(apply_fn, loss_fn, params, x, target)


def diagnose(apply_fn, params=None, x=None, *, states_fn: Callable | None = None,
             embed_fn: Callable | None = None, attention_fn: Callable | None = None,
             loss_fn: Callable | None = None, mean_field: dict | None = None,
             tokens: bool | None = None, burn_in: int = 0, num_probes: int = 16,
             engine: Dense | Auto | None = None, memory_budget: float | None = None,
             key=None) -> Diagnosis:
    """Measures a model's signal propagation and says in plain words what to change.

    `diagnose(apply_fn, params, x)` for a pure function (the whole-network part, unless
    `states_fn` is given), or `diagnose(module, x=x)` / `diagnose(module, x)` for an
    `nnx.Module`: a `isometry.LayerStack` gets the per-layer part (χ_l, phase, ξ, tokens), one
    with `attention_weights(x0)` the attention gap. The findings are listed in the module doc.

    Args:
      apply_fn, params, x: the model and one input (no batch axis).
      states_fn, embed_fn, attention_fn: `(params, x0) -> x_0 … x_L`, `(params, x) -> x0` and
        `(params, x0) -> (L, …, T, T)` for a pure function with layers (`isometry.from_stack`).
      loss_fn: `y -> scalar` for the gradients (default ½·mean (y − t)², t fixed N(0, 1)).
      mean_field: {"activation", "sigma_w2", "sigma_b2"} of a plain FC net (adds the mean-field
        χ₁, ξ, critical σ_w²); with "alpha" (and "q0") of a ReZero FC net (`theory`).
      tokens: treat each x_l (T, d) as a token sequence (default: when x_l is 2-D).
      burn_in: layers skipped at the bottom of the growth-rate fit.
      num_probes: Hutchinson probes of χ_l when the dense Jacobians exceed the budget.
      engine: the dense engine's settings (`iso.dense(memory_budget=...)`; an `iso.auto(...)`
        gives its dense part): spectra are dense where they fit the budget, χ_l Hutchinson
        beyond. memory_budget: the shorthand for `engine=iso.dense(memory_budget=...)`.
      key: for the loss target and probes (default PRNGKey(0)).

    Returns:
      A `Diagnosis` (`.findings`, `.table()`, `.to_dict()`, `.figure()`).
    """
    check_setting("burn_in", burn_in, low=0, integer=True)
    engine = dense_settings(engine, memory_budget, "diagnose")
    key = jax.random.key(0) if key is None else key
    fns = dict(states_fn=states_fn, embed_fn=embed_fn, attention_fn=attention_fn)
    if isinstance(apply_fn, nnx.Module):
        apply_fn, params, x, fns = _from_module(apply_fn, params, x, fns)
    if x is None:
        raise TypeError("diagnose needs an input x: diagnose(apply_fn, params, x) or "
                        "diagnose(module, x=x)")
    x = jnp.asarray(x) if not isinstance(x, (dict, list, tuple)) else x
    y, grads = _output_and_grads(apply_fn, loss_fn, params, x, key)
    out_dtype = str(jnp.result_type(jax.tree.leaves(y)[0]))
    bad = sum(int(np.sum(~np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(y))
    if bad:
        total = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(y))
        return empty_diagnosis([nonfinite_finding(bad, total)], out_dtype)
    x0 = x if fns["embed_fn"] is None else cached_jit(fns["embed_fn"])(params, x)
    if fns["states_fn"] is not None:
        profile = _stack_profile(fns["states_fn"], params, x0, engine, num_probes, key)
    else:
        profile = _Profile(spectrum=_dense_or_none(apply_fn, engine, params, x))
    return _assemble(profile, grads, params, x0, fns["attention_fn"], out_dtype,
                     mean_field, tokens, burn_in)


def _assemble(profile: _Profile, grads, params, x0, attention_fn, out_dtype, mean_field,
              tokens, burn_in) -> Diagnosis:
    """The `Diagnosis` from the measurements: shares, phase, α's, tokens and the findings."""
    spec = profile.spectrum
    dtype = str(spec.singular_values.dtype) if spec is not None else out_dtype
    res_share = f32_share = math.nan
    if spec is not None:
        res_share = resolution_share(spec.singular_values, spec.n_in, spec.n_out, dtype)
        f32_share = resolution_share(spec.singular_values, spec.n_in, spec.n_out, jnp.float32)
    g, g_se, phase, xi, xi_se = _phase(profile, burn_in)
    theory_info = mean_field_theory(mean_field, profile.n_layers) if mean_field else None
    alphas = alpha_values(params)
    alpha_grads = alpha_values(grads) if alphas else {}
    layer_norms = group_norms(grads)
    tok = _tokens(profile.states, tokens)
    att_sigma, att_ratio = _attention(attention_fn, params, x0)
    n_tokens = profile.states.shape[-2] if tok["cosine"] is not None else 0
    findings = [
        phase_finding(phase, g, g_se, xi, profile.n_layers, profile.chi[-1], theory_info)
        if phase in ("ordered", "chaotic") else None,
        None if spec is None else resolution_finding(res_share, dtype, spec.n_in, spec.n_out),
        *alpha_findings(alphas, alpha_grads, layer_norms),
        gradient_spread_finding(layer_norms),
        rank_collapse_finding(tok["cosine"], tok["stable_rank"], profile.n_layers, n_tokens),
        attention_finding(att_ratio)]
    return Diagnosis(
        spectrum=spec, dtype=dtype, n_layers=profile.n_layers, resolution_share=res_share,
        float32_share=f32_share, chi_profile=profile.chi, chi_profile_stderr=profile.chi_err,
        log10_sigma_quantiles=profile.quantiles, growth_rate=g, growth_rate_stderr=g_se,
        phase=phase, depth_scale=xi, depth_scale_stderr=xi_se, alphas=alphas,
        alpha_grads=alpha_grads, layer_grad_norms=layer_norms, token_cosine=tok["cosine"],
        inverse_stable_rank=tok["inverse_stable_rank"], stable_rank=tok["stable_rank"],
        rank_one_residual=tok["rank_one_residual"], attention_sigma=att_sigma,
        attention_ratio=att_ratio, theory=theory_info,
        findings=sort_findings(f for f in findings if f is not None))
