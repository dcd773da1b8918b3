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

Example:
    >>> net = models.FullyConnected(32, 128, variant="plain", activation="tanh", sigma_w2=1.0,
    ...                             sigma_b2=0.05, rngs=nnx.Rngs(0))
    >>> d = iso.diagnose(net, x=jax.random.normal(jax.random.key(1), (128,)) * 0.5,
    ...                  mean_field=dict(activation="tanh", sigma_w2=1.0, sigma_b2=0.05))
    >>> d.phase, d.depth_scale                  # "ordered", ≈ 3.6 = −1/ln 0.759
    >>> print(d.table())                        # the findings: "σ_w² = 1.761 puts χ₁ at 1 …"
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isometry._jacobian import JacobianTooLargeError
from isometry._layerwise import (depth_profile, layerwise_chi_fn, layerwise_spectrum_fn,
                                 state_runs)
from isometry._params import _key_name, alpha_values, is_alpha_path
from isometry._spectrum import Spectrum, spectrum_fn
from isometry._stack import LAYER_AXIS_KEY, LayerStack

__all__ = ["Diagnosis", "Finding", "diagnose", "token_statistics", "attention_gap",
           "growth_rate", "resolution_share", "FINDING_CODES"]

#: The findings `diagnose` can report, by code.
FINDING_CODES = ("nonfinite", "ordered", "chaotic", "resolution", "dead_branch",
                 "negative_alpha", "inactive_alpha", "gradient_spread", "rank_collapse",
                 "attention_rank_one")

#: Thresholds of the findings (documented in `diagnose`).
RESOLUTION_SHARE = 0.01
INACTIVE_ALPHA = 0.01
GRADIENT_SPREAD_DECADES = 3.0
COLLAPSE_COSINE = 0.9
ATTENTION_RATIO = 0.1


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem `diagnose` found.

    Attributes:
      code: one of `FINDING_CODES`.
      message: the problem in plain words, with the number behind it.
      value: that number.
      suggestion: a change to try.
    """

    code: str
    message: str
    value: float
    suggestion: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` measured (numpy arrays and floats) and the findings.

    Attributes:
      spectrum: the `Spectrum` of J = ∂x_L/∂x_0 (None if the forward pass is not finite).
      dtype: the dtype J was computed in.
      n_layers: L (0 for a function without layer stack).
      resolution_share: share of σ(J) below the dtype's resolution.
      float32_share: share of σ(J) below float32's resolution (what float32 would lose).
      chi_profile, chi_profile_stderr: χ_l for l = 0..L (stderr 0 when dense), or None.
      log10_sigma_quantiles: (3, L+1) 10/50/90% quantiles of log10 σ(J_l) (dense only).
      growth_rate, growth_rate_stderr: g and se(g) (nan without layer stack).
      phase: "ordered", "critical", "chaotic" or "" (no layer stack).
      depth_scale, depth_scale_stderr: ξ = 1/|g| (inf at g = 0) and se(g)/g².
      alphas, alpha_grads: {layer name: α_l} and {layer name: ∂loss/∂α_l}.
      layer_grad_norms: {layer or module name: ‖∂loss/∂θ‖} (stacked layers one by one).
      token_cosine, inverse_stable_rank, stable_rank, rank_one_residual: per depth (L+1,),
        or None when the stream is not a token sequence.
      attention_sigma, attention_ratio: (L, 2) mean top-two σ of the attention matrices of
        each layer and (L,) mean σ₂/σ₁, or None.
      theory: mean-field prediction when `mean_field=` was given (χ₁, ln χ₁, ξ, critical σ_w²).
      findings: the `Finding`s, in the order of `FINDING_CODES`.
    """

    spectrum: Spectrum | None
    dtype: str
    n_layers: int
    resolution_share: float
    float32_share: float
    chi_profile: np.ndarray | None
    chi_profile_stderr: np.ndarray | None
    log10_sigma_quantiles: np.ndarray | None
    growth_rate: float
    growth_rate_stderr: float
    phase: str
    depth_scale: float
    depth_scale_stderr: float
    alphas: dict
    alpha_grads: dict
    layer_grad_norms: dict
    token_cosine: np.ndarray | None
    inverse_stable_rank: np.ndarray | None
    stable_rank: np.ndarray | None
    rank_one_residual: np.ndarray | None
    attention_sigma: np.ndarray | None
    attention_ratio: np.ndarray | None
    theory: dict | None
    findings: tuple

    @property
    def codes(self) -> list[str]:
        """The codes of the findings."""
        return [f.code for f in self.findings]

    def to_json(self) -> dict:
        """Everything as plain lists, floats and strings (NaN/Inf become None via `_io`)."""
        from isometry._io import jsonable

        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "spectrum":
                value = None if value is None else dict(
                    value.summary(), singular_values=np.asarray(value.singular_values))
            elif field.name == "findings":
                value = [f.to_json() for f in value]
            out[field.name] = value
        return jsonable(out)

    def figure(self, title: str | None = None):
        """The four-panel figure (see `isometry.diagnosis_figure`)."""
        from isometry._plot_diagnosis import diagnosis_figure

        return diagnosis_figure(self, title)

    def table(self) -> str:
        """A plain-text report: the measurements, then the findings."""
        rows = []
        if self.spectrum is not None:
            s = self.spectrum.summary()
            rows += [("chi of J", _g(s["chi"])), ("mean ln sigma", _g(s["mean_log"])),
                     ("std ln sigma", _g(s["std_log"])),
                     ("sigma max / min", f"{_g(s['sigma_max'])} / {_g(s['sigma_min'])}"),
                     ("share of sigma in [0.5, 2]", _g(s["isometry_share"])),
                     (f"share below {self.dtype} resolution", _g(self.resolution_share))]
        if self.phase:
            rows += [("layers", str(self.n_layers)),
                     ("ln chi per layer", f"{_g(self.growth_rate)} ± {_g(self.growth_rate_stderr)}"),
                     ("phase", self.phase),
                     ("depth scale xi (layers)", f"{_g(self.depth_scale)} ± "
                                                 f"{_g(self.depth_scale_stderr)}")]
        if self.theory:
            rows += [("mean field chi_1", _g(self.theory["chi_1"])),
                     ("mean field xi", _g(self.theory["depth_scale"]))]
        if self.alphas:
            a = np.array([np.mean(v) for v in self.alphas.values()])
            ga = np.array([np.mean(np.abs(v)) for v in self.alpha_grads.values()])
            rows += [("alpha min / max", f"{_g(a.min())} / {_g(a.max())}"),
                     ("|dL/dalpha| min / max", f"{_g(ga.min())} / {_g(ga.max())}")]
        if self.token_cosine is not None:
            rows += [("token cosine x_0 -> x_L",
                      f"{_g(self.token_cosine[0])} -> {_g(self.token_cosine[-1])}"),
                     ("stable rank x_0 -> x_L",
                      f"{_g(self.stable_rank[0])} -> {_g(self.stable_rank[-1])}")]
        if self.attention_ratio is not None:
            rows += [("attention sigma2/sigma1 (mean)", _g(float(np.mean(self.attention_ratio))))]
        width = max(len(r[0]) for r in rows) if rows else 0
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines.append("")
        if not self.findings:
            lines.append("findings: none (no problem found)")
        for f in self.findings:
            lines.append(f"[{f.code}] {f.message}")
            lines.append(f"    -> {f.suggestion}")
        return "\n".join(lines)


def _g(x) -> str:
    x = float(x)
    return f"{x:.4g}" if math.isfinite(x) else str(x)


# --- measurements on arrays (exposed for tests and for users' own streams) -------------------


def resolution_share(singular_values, n_in: int, n_out: int, dtype) -> float:
    """Share of σ with σ < σ_max · max(n_in, n_out) · ε(dtype), pooled over batch axes.

    The tolerance is numpy's `matrix_rank` default: an SVD in `dtype` has absolute error of
    about that size, so such σ are indistinguishable from 0 (rounding noise).
    """
    s = np.asarray(singular_values, np.float64)
    s = s.reshape(-1, s.shape[-1])
    tol = s.max(axis=-1, keepdims=True) * max(n_in, n_out) * float(jnp.finfo(dtype).eps)
    return float(np.mean(s < tol))


def growth_rate(chi, burn_in: int = 0) -> tuple[float, float]:
    """(g, se(g)): the mean per-layer increment of ln χ_l over l ≥ burn_in, and its error.

    Args:
      chi: χ_0 … χ_L (positive), or (n, L+1) of several nets or inputs (increments pooled).
      burn_in: layers skipped at the bottom (the transient before x_l reaches its fixed point).

    Returns:
      g = mean of d_l = ln χ_{l+1} − ln χ_l, and sd(d)/√(number of increments).
    """
    c = np.atleast_2d(np.asarray(chi, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.diff(np.log(c[:, burn_in:]), axis=-1).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan
    if d.size == 1:
        return float(d[0]), math.nan
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def phase_of(g: float, se: float, n_layers: int) -> str:
    """"ordered" (g < 0), "critical" or "chaotic" (g > 0) from the growth rate g ± se over L layers.

    Critical when χ changes by less than a factor 2 over the stack (|g|·L ≤ ln 2), or by less
    than a factor 10 with g within 3 standard errors of 0.
    """
    if not math.isfinite(g):
        return ""
    total = abs(g) * max(n_layers, 1)
    se = se if math.isfinite(se) else 0.0
    if total <= math.log(2) or (total <= math.log(10) and abs(g) <= 3 * se):
        return "critical"
    return "ordered" if g < 0 else "chaotic"


def token_statistics(x) -> dict[str, np.ndarray]:
    """Rank-collapse measures of token representations X (…, T, d), averaged over batch axes.

    Returns:
      dict of floats (batch-averaged): `cosine`, the mean cosine similarity of distinct tokens
      (1 when all tokens are parallel, 0 for orthogonal ones); `stable_rank` = ‖X‖_F²/‖X‖_2²
      ∈ [1, T]; `inverse_stable_rank` (1 for identical tokens, exactly 1/T for orthogonal
      tokens of equal norm); `rank_one_residual` = ‖X − 1x̄ᵀ‖_F/‖X‖_F (0 for identical tokens;
      Dong et al. 2021).

    Example:
      >>> token_statistics(jnp.ones((8, 16)))["cosine"]      # 1.0
    """
    X = np.asarray(x, np.float64)
    X = X.reshape(-1, *X.shape[-2:])
    T = X.shape[-2]
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    U = X / np.where(norms > 0, norms, 1.0)
    gram = U @ np.swapaxes(U, -1, -2)
    off = (gram.sum(axis=(-1, -2)) - np.trace(gram, axis1=-2, axis2=-1)) / max(T * (T - 1), 1)
    fro2 = np.sum(X ** 2, axis=(-1, -2))
    top = np.linalg.norm(X, ord=2, axis=(-2, -1)) ** 2
    srank = np.where(top > 0, fro2 / np.where(top > 0, top, 1.0), np.nan)
    resid = np.linalg.norm(X - X.mean(axis=-2, keepdims=True), axis=(-2, -1))
    rel = resid / np.where(fro2 > 0, np.sqrt(fro2), 1.0)
    return dict(cosine=float(off.mean()), stable_rank=float(np.nanmean(srank)),
                inverse_stable_rank=float(np.nanmean(1.0 / srank)),
                rank_one_residual=float(rel.mean()))


def attention_gap(weights) -> tuple[np.ndarray, np.ndarray]:
    """Top-two singular values of attention matrices A (…, T, T) and σ₂/σ₁, per matrix.

    A row-stochastic A has σ₁ ≥ 1 (A1 = 1). Uniform attention, A = 11ᵀ/T, has σ = (1, 0, …):
    the largest possible gap, every token replaced by the mean; A = I has σ₁ = σ₂ = 1.

    Returns:
      (σ of shape (…, 2), σ₂/σ₁ of shape (…)).
    """
    A = np.asarray(weights, np.float64)
    s = np.linalg.svd(A, compute_uv=False)[..., :2]
    if s.shape[-1] < 2:
        s = np.concatenate([s, np.zeros_like(s)], axis=-1)
    return s, s[..., 1] / np.where(s[..., 0] > 0, s[..., 0], 1.0)


# --- gradients -------------------------------------------------------------------------------


def _names(path) -> list[str]:
    return [_key_name(k) for k in path if _key_name(k) != "value"]


def _group_norms(grads) -> dict[str, float]:
    """‖gradient‖ per layer: stacked leaves (a `layers` key) one entry per layer index, others
    grouped by their path up to the first integer key (or their first key)."""
    sq: dict[str, float] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if g is None or not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
            continue
        names = _names(path)
        g = np.asarray(g, np.float64)
        if LAYER_AXIS_KEY in names and g.ndim >= 1:
            at = names.index(LAYER_AXIS_KEY)
            per = np.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
            for i, v in enumerate(per):
                key = "/".join(names[:at] + [str(i)])
                sq[key] = sq.get(key, 0.0) + float(v)
            continue
        cut = next((i for i, n in enumerate(names) if n.isdigit()), 0)
        key = "/".join(names[:cut + 1]) if names else "params"
        sq[key] = sq.get(key, 0.0) + float(np.sum(g ** 2))
    return {k: math.sqrt(v) for k, v in sq.items()}


def _default_loss(out, target):
    """½·mean (y − t)² summed over output leaves."""
    diff = jax.tree.map(lambda a, t: jnp.mean(jnp.square(a - t)), out, target)
    return 0.5 * sum(jax.tree.leaves(diff))


@functools.lru_cache(maxsize=32)
def _grad_fn(apply_fn: Callable, loss_fn: Callable | None, treedef, idx: tuple) -> Callable:
    """Jitted (floating leaves, other leaves, x, target) -> (output, gradients)."""

    def f(floats, others, x, target):
        full = list(others)
        for i, a in zip(idx, floats):
            full[i] = a
        out = apply_fn(jax.tree_util.tree_unflatten(treedef, full), x)
        value = _default_loss(out, target) if loss_fn is None else loss_fn(out)
        return value, out

    return jax.jit(jax.value_and_grad(f, has_aux=True))


def _float_grad(apply_fn: Callable, loss_fn, params, x, target) -> tuple:
    """(output, ∂loss/∂params) with gradients of the floating leaves of params (None
    elsewhere); compiled once per (apply_fn, loss_fn, parameter structure)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    idx = tuple(i for i, a in enumerate(leaves)
                if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact))
    others = [None if i in idx else a for i, a in enumerate(leaves)]
    fn = _grad_fn(apply_fn, loss_fn, treedef, idx)
    (_, out), g = fn([leaves[i] for i in idx], others, x, target)
    full = [None] * len(leaves)
    for i, a in zip(idx, g):
        full[i] = a
    return out, jax.tree_util.tree_unflatten(treedef, full)


@functools.lru_cache(maxsize=32)
def _module_fns(graphdef) -> dict:
    """Pure functions of a module's graph, one object per graph (so their compilations are
    reused across seeds and scales of the same architecture)."""

    def apply(p, xx):
        return nnx.merge(graphdef, p)(xx)

    def states(p, x0):
        return nnx.merge(graphdef, p).states(x0)

    def embed(p, xx):
        return nnx.merge(graphdef, p).embed(xx)

    def attention(p, x0):
        return nnx.merge(graphdef, p).attention_weights(x0)

    return dict(apply=apply, states=states, embed=embed, attention=attention)


@functools.lru_cache(maxsize=32)
def _jit(fn: Callable) -> Callable:
    return jax.jit(fn)


@functools.lru_cache(maxsize=32)
def _layerwise_fns(states_fn: Callable, memory_budget: float, num_probes: int) -> dict:
    return dict(spectrum=layerwise_spectrum_fn(states_fn, memory_budget=memory_budget),
                chi=layerwise_chi_fn(states_fn, num_probes=num_probes))


@functools.lru_cache(maxsize=32)
def _spectrum_fns(fn: Callable, memory_budget: float) -> Callable:
    return spectrum_fn(fn, "dense", memory_budget=memory_budget)


@functools.lru_cache(maxsize=32)
def _last_state_fn(states_fn: Callable) -> Callable:
    return lambda p, xx: state_runs(states_fn(p, xx))[-1][-1]


def _alpha_layer_key(name: str) -> str:
    """"blocks/3/alpha" → "blocks/3": the layer an α belongs to."""
    parts = name.split("/")
    return "/".join(parts[:parts.index("alpha")]) if "alpha" in parts else name


# --- the diagnosis ---------------------------------------------------------------------------


def _mean_field_theory(spec: dict, n_layers: int) -> dict:
    from isometry import theory

    activation = spec["activation"]
    sw2, sb2 = float(spec["sigma_w2"]), float(spec.get("sigma_b2", 0.0))
    if spec.get("alpha") is not None:  # ReZero/residual x + α φ(Wx + b): free probability
        from isometry import theory_residual

        alpha, depth = float(spec["alpha"]), max(n_layers, 1)
        m1 = theory_residual.residual_m1(activation, depth, alpha, sw2, sb2,
                                         q0=float(spec.get("q0", 1.0)))
        g = math.log(m1) / depth
        return dict(activation=activation, sigma_w2=sw2, sigma_b2=sb2, alpha=alpha,
                    chi_1=math.exp(g), growth_rate=g,
                    depth_scale=1 / abs(g) if g else math.inf,
                    phase=phase_of(g, 0.0, n_layers) if n_layers else "",
                    nvar=theory_residual.residual_nvar(activation, depth, alpha, sw2, sb2,
                                                       q0=float(spec.get("q0", 1.0))),
                    critical_sigma_w2=math.nan)
    chi1 = theory.chi_1(activation, sw2, sb2)
    g = math.log(chi1)
    out = dict(activation=activation, sigma_w2=sw2, sigma_b2=sb2, chi_1=chi1, growth_rate=g,
               depth_scale=1 / abs(g) if g else math.inf,
               phase=phase_of(g, 0.0, n_layers) if n_layers else "")
    try:
        out["critical_sigma_w2"] = theory.critical_sigma_w2(activation, sb2)
    except ValueError:
        out["critical_sigma_w2"] = math.nan
    return out


def diagnose(apply_fn, params=None, x=None, *, states_fn: Callable | None = None,
             embed_fn: Callable | None = None, attention_fn: Callable | None = None,
             loss_fn: Callable | None = None, mean_field: dict | None = None,
             tokens: bool | None = None, burn_in: int = 0, num_probes: int = 16,
             memory_budget: float = 2**28, key=None) -> Diagnosis:
    """Measures a model's signal propagation and says in plain words what to change.

    Calling conventions: `diagnose(apply_fn, params, x)` for a pure function (the whole-network
    part only, unless `states_fn` is given), or `diagnose(module, x=x)` / `diagnose(module, x)`
    for an `nnx.Module`; a module that follows `isometry.LayerStack` gets the per-layer part
    (J = ∂x_L/∂x_0 of the stack, χ_l, phase, ξ, tokens), and one with
    `attention_weights(x0)` (`models.Transformer`) the attention gap.

    Findings (code: fires when — each with its number and a suggested change):
      nonfinite: the output has NaN/Inf entries (nothing else is measured).
      ordered / chaotic: the phase from the growth rate g of ln χ_l is not critical
        (see `phase_of`); with `mean_field` the suggestion names the critical σ_w².
      resolution: more than 1% of σ(J) are below the dtype's resolution.
      dead_branch: every gradient of a gated layer l (∂L/∂α_l and the branch's) is 0 — a zero
        gate on a branch whose output is identically 0, or a branch with zero output and zero
        derivative (ReLU of 0) at any α: nothing in the layer moves.
      negative_alpha: some α_l < 0.
      inactive_alpha: α's differ (a trained model) and some |α_l| < 1% of max |α|.
      gradient_spread: per-layer gradient norms of the stacked layers span > 3 decades.
      rank_collapse: mean token cosine ≥ 0.9 at x_L while < 0.9 at x_0.
      attention_rank_one: in at least half of the layers the attention's mean σ₂/σ₁ < 0.1.

    Args:
      apply_fn: `(params, x) -> y`, or an `nnx.Module`.
      params: the parameters (for a module: None, or x when x is not given).
      x: one input (no batch axis; a Transformer's (T, d) sequence, a ResNet's (H, W, C)).
      states_fn, embed_fn: `(params, x0) -> x_0 … x_L stacked` and `(params, x) -> x0` for a
        pure function that has layers (see `isometry.from_stack`); taken from the module.
      attention_fn: `(params, x0) -> (L, …, T, T)` attention weights (taken from a module's
        `attention_weights`).
      loss_fn: `y -> scalar` of the output for the gradients (default ½·mean (y − t)², t a
        fixed N(0, 1) target).
      mean_field: {"activation", "sigma_w2", "sigma_b2"} of a plain FC net: adds the
        mean-field prediction (χ₁, ln χ₁, ξ, critical σ_w²) and names σ_w² in suggestions;
        with "alpha" (and "q0" = ‖x_0‖²/N) for a ReZero FC net x + α φ(Wx + b), the
        free-probability prediction of `theory_residual` (geometric-mean χ per layer, nvar).
      tokens: treat each x_l (T, d) as a token sequence (default: when x_l is 2-D).
      burn_in: layers skipped at the bottom of the growth-rate fit.
      num_probes: Hutchinson probes of χ_l when the dense layer-by-layer Jacobians exceed
        `memory_budget` (bytes).
      key: PRNG key for the loss target and probes (default PRNGKey(0)).

    Returns:
      A `Diagnosis` (`.findings`, `.table()`, `.to_json()`; `isometry.plot.diagnosis_figure`).
    """
    key = jax.random.key(0) if key is None else key
    if isinstance(apply_fn, nnx.Module):
        module = apply_fn
        if x is None:
            x, params = params, None
        graphdef, params = nnx.split(module)
        fns = _module_fns(graphdef)
        apply_fn = fns["apply"]
        if isinstance(module, LayerStack) and states_fn is None:
            states_fn, embed_fn = fns["states"], fns["embed"]
            if attention_fn is None and hasattr(module, "attention_weights"):
                attention_fn = fns["attention"]
    if x is None:
        raise TypeError("diagnose needs an input x: diagnose(apply_fn, params, x) or "
                        "diagnose(module, x=x)")
    x = jnp.asarray(x) if not isinstance(x, (dict, list, tuple)) else x
    findings: list[Finding] = []

    # one compiled pass: the output, the loss and its gradient
    shapes = jax.eval_shape(apply_fn, params, x)
    target = jax.tree.map(lambda a: jax.random.normal(jax.random.fold_in(key, 1), a.shape,
                                                      a.dtype), shapes)
    y, grads = _float_grad(apply_fn, loss_fn, params, x, target)
    bad = sum(int(np.sum(~np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(y))
    if bad:
        total = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(y))
        findings.append(Finding(
            "nonfinite", f"the output has {bad} NaN/Inf entries out of {total}: the forward "
                         f"pass overflows or divides by zero at this initialization", bad,
            "check the input and embedding scale (e.g. √d·Embed), normalization epsilons and "
            "the weight variance; run with jax_debug_nans to find the operation; try float64"))
        return _empty(findings, str(jnp.result_type(jax.tree.leaves(y)[0])))

    # --- J, the profile ---------------------------------------------------------------------
    n_layers, chi_prof, chi_err, quant, spec, states = 0, None, None, None, None, None
    if states_fn is not None:
        x0 = x if embed_fn is None else _jit(embed_fn)(params, x)
        states = _jit(states_fn)(params, x0)
        runs = state_runs(states)
        n_layers = sum(r.shape[0] for r in runs) - len(runs)
        n_in = int(np.size(x0))
        n_total = sum(int(np.size(r)) for r in runs)
        itemsize = jnp.dtype(runs[-1].dtype).itemsize
        if 3 * n_in * n_total * itemsize <= memory_budget:
            prof = _layerwise_fns(states_fn, memory_budget, num_probes)["spectrum"](params, x0)
            dp = depth_profile(prof)
            chi_prof, quant = dp["chi"], dp["log10_sigma_quantiles"]
            chi_err = np.zeros_like(chi_prof)
            last = state_runs(prof)[-1]
            spec = jax.tree.map(lambda a: a[-1], last) if last.singular_values.ndim > 1 else last
            spec = Spectrum(spec.singular_values, spec.chi, spec.n_nonfinite, last.n_in,
                            last.n_out)
        else:
            chi, err = _layerwise_fns(states_fn, memory_budget, num_probes)["chi"](params, x0,
                                                                                 key)
            chi_prof, chi_err = np.asarray(chi, np.float64), np.asarray(err, np.float64)
            try:
                spec = _spectrum_fns(_last_state_fn(states_fn), memory_budget)(params, x0)
            except JacobianTooLargeError:
                spec = None
    else:
        try:
            spec = _spectrum_fns(apply_fn, memory_budget)(params, x)
        except JacobianTooLargeError:
            spec = None

    dtype = str(spec.singular_values.dtype) if spec is not None else str(
        jnp.result_type(jax.tree.leaves(y)[0]))
    res_share = f32_share = math.nan
    if spec is not None:
        res_share = resolution_share(spec.singular_values, spec.n_in, spec.n_out, dtype)
        f32_share = resolution_share(spec.singular_values, spec.n_in, spec.n_out, jnp.float32)

    g = g_se = math.nan
    phase, xi, xi_se = "", math.nan, math.nan
    if chi_prof is not None and n_layers >= 1:
        g, g_se = growth_rate(chi_prof, burn_in=burn_in)
        if n_layers - burn_in == 1 or not math.isfinite(g_se):
            g_se = 0.0
        phase = phase_of(g, g_se, n_layers)
        xi = 1 / abs(g) if g else math.inf
        xi_se = g_se / g ** 2 if g else math.inf
    theory_info = _mean_field_theory(mean_field, n_layers) if mean_field else None

    # --- α and gradients ------------------------------------------------------------------
    alphas = alpha_values(params)
    alpha_grads = alpha_values(grads) if alphas else {}
    layer_norms = _group_norms(grads)

    # --- tokens and attention ----------------------------------------------------------------
    tok = dict(cosine=None, inverse_stable_rank=None, stable_rank=None, rank_one_residual=None)
    if states is not None and not isinstance(states, tuple):
        per = states.ndim - 1
        use = (per == 2) if tokens is None else tokens
        if use and per >= 2:
            rows = [token_statistics(states[l]) for l in range(states.shape[0])]
            tok = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    att_sigma = att_ratio = None
    if attention_fn is not None:
        x0 = x if embed_fn is None else _jit(embed_fn)(params, x)
        w = np.asarray(_jit(attention_fn)(params, x0), np.float64)
        s, r = attention_gap(w)
        att_sigma = s.reshape(s.shape[0], -1, 2).mean(axis=1)
        att_ratio = r.reshape(r.shape[0], -1).mean(axis=1)

    # --- findings ----------------------------------------------------------------------------
    if phase in ("ordered", "chaotic"):
        findings.append(_phase_finding(phase, g, g_se, xi, n_layers, chi_prof, theory_info))
    if spec is not None and res_share > RESOLUTION_SHARE:
        eps = float(jnp.finfo(dtype).eps) * max(spec.n_in, spec.n_out)
        if dtype == "float64":
            sug = ("these directions are lost even in float64: move the model toward isometry "
                   "(see the phase finding, iso.tune_init)")
        else:
            sug = (f"use float64 (jax.config.update('jax_enable_x64', True), "
                   f"param_dtype=jnp.float64 and float64 inputs) to resolve them")
        findings.append(Finding(
            "resolution", f"{100 * res_share:.0f}% of σ are below {dtype} resolution "
                          f"(σ < {eps:.2g}·σ_max): the SVD cannot tell them from 0",
            res_share, sug))
    findings += _alpha_findings(alphas, alpha_grads, layer_norms)
    spread = _stacked_spread(layer_norms)
    if spread is not None and spread[0] > GRADIENT_SPREAD_DECADES:
        decades, lo, hi = spread
        findings.append(Finding(
            "gradient_spread", f"per-layer gradient norms span {decades:.1f} decades "
                               f"({lo[0]}: {lo[1]:.2g} … {hi[0]}: {hi[1]:.2g}): layers train "
                               f"at very different speeds", decades,
            "move toward χ₁ = 1 (iso.tune_init), use ReZero (x + α·F(x), α_init = 0) or "
            "per-layer learning rates"))
    cos = tok["cosine"]
    if cos is not None and cos[-1] >= COLLAPSE_COSINE and cos[0] < COLLAPSE_COSINE:
        findings.append(Finding(
            "rank_collapse", f"token representations collapse: mean cosine similarity "
                             f"{cos[0]:.2f} at x_0 → {cos[-1]:.3f} at x_{n_layers}, stable "
                             f"rank {tok['stable_rank'][-1]:.2f} of "
                             f"{states.shape[-2]} tokens", float(cos[-1]),
            "keep the identity path dominant: ReZero (α_init = 0) or Pre-Norm instead of "
            "Post-Norm, fewer layers, or sharper attention at init"))
    if att_ratio is not None and np.mean(att_ratio < ATTENTION_RATIO) >= 0.5:
        n_low = int(np.sum(att_ratio < ATTENTION_RATIO))
        findings.append(Finding(
            "attention_rank_one", f"attention is nearly rank one in {n_low} of "
                                  f"{att_ratio.size} layers (mean σ₂/σ₁ = "
                                  f"{float(np.mean(att_ratio)):.3f}): each head averages the "
                                  f"tokens, which drives rank collapse", float(np.mean(att_ratio)),
            "larger query/key initialization or a lower softmax temperature at init; keep the "
            "residual path (ReZero) so attention cannot average the stream away"))

    return Diagnosis(spec, dtype, n_layers, res_share, f32_share, chi_prof, chi_err, quant,
                     g, g_se, phase, xi, xi_se, alphas, alpha_grads, layer_norms,
                     tok["cosine"], tok["inverse_stable_rank"], tok["stable_rank"],
                     tok["rank_one_residual"], att_sigma, att_ratio, theory_info,
                     tuple(sorted(findings, key=lambda f: FINDING_CODES.index(f.code))))


def _empty(findings, dtype) -> Diagnosis:
    nan = math.nan
    return Diagnosis(None, dtype, 0, nan, nan, None, None, None, nan, nan, "", nan, nan, {}, {},
                     {}, None, None, None, None, None, None, None, tuple(findings))


def _phase_finding(phase, g, g_se, xi, n_layers, chi_prof, theory_info) -> Finding:
    verb = "falls" if phase == "ordered" else "grows"
    what = "vanish" if phase == "ordered" else "explode"
    msg = (f"{phase} phase: χ_l {verb} by a factor e every ξ = {xi:.3g} layers (ln χ per "
           f"layer = {g:.3g} ± {g_se:.2g}), so signals and gradients {what} over the "
           f"{n_layers} layers (χ_L = {float(chi_prof[-1]):.3g})")
    if theory_info and math.isfinite(theory_info.get("critical_sigma_w2", math.nan)):
        sug = (f"σ_w² = {theory_info['critical_sigma_w2']:.4g} puts χ₁ at 1 (mean field, "
               f"σ_b² = {theory_info['sigma_b2']:.3g}; now σ_w² = {theory_info['sigma_w2']:.4g}, "
               f"χ₁ = {theory_info['chi_1']:.4g})")
    else:
        factor = math.exp(-g)
        sug = (f"scale the weight variance by about e^(−ln χ₁) = {factor:.3g} (exact for "
               f"ReLU and linear layers), add ReZero connections (x + α·F(x)), or let "
               f"iso.tune_init find the scale")
    return Finding(phase, msg, g, sug)


def _alpha_findings(alphas: dict, alpha_grads: dict, layer_norms: dict) -> list[Finding]:
    out = []
    if not alphas:
        return out
    names = list(alphas)
    a = {n: np.asarray(v, np.float64) for n, v in alphas.items()}
    tiny = np.finfo(np.float64).tiny
    dead = []
    for n in names:
        ga = np.asarray(alpha_grads.get(n, np.nan), np.float64)
        layer = layer_norms.get(_alpha_layer_key(n), math.nan)
        if np.all(np.abs(ga) <= tiny) and layer <= tiny:
            dead.append(n)
    if dead:
        zero_gate = all(np.all(a[n] == 0) for n in dead)
        if zero_gate:
            why = "α = 0 and a branch output that is identically 0"
            sug = ("initialize α to a small non-zero value (α_init = 1e-3) when the branch "
                   "passes gradient at 0 (a zero-initialized linear output projection, tanh), "
                   "else the branch's last layer to non-zero weights")
        else:
            why = "a branch whose output and gradient are identically 0 (e.g. ReLU of 0)"
            sug = ("initialize the branch's weights to non-zero values: α alone cannot "
                   "revive a branch with zero output and zero derivative")
        out.append(Finding(
            "dead_branch", f"{why} in {len(dead)} of {len(names)} layers ({_span(dead)}): "
                           f"∂L/∂α = 0 and no parameter of these layers receives gradient, so "
                           f"they never move", float(len(dead)), sug))
    neg = [n for n in names if np.any(a[n] < 0)]
    if neg:
        worst = min(neg, key=lambda n: float(np.min(a[n])))
        out.append(Finding(
            "negative_alpha", f"α < 0 in {len(neg)} of {len(names)} layers ({_span(neg)}; "
                              f"{worst} = {float(np.min(a[worst])):.3g}): these layers "
                              f"subtract their branch", float(np.min(a[worst])),
            "give α its own optimizer without weight decay (iso.alpha_mask) and a smaller "
            "learning rate; check for instabilities before the sign change"))
    mags = np.array([float(np.max(np.abs(a[n]))) for n in names])
    values = np.concatenate([a[n].ravel() for n in names])
    if mags.max() > 0 and np.ptp(values) > 0:
        small = [n for n, m in zip(names, mags) if m < INACTIVE_ALPHA * mags.max()]
        if small:
            out.append(Finding(
                "inactive_alpha", f"|α| is below 1% of the largest |α| ({mags.max():.3g}) in "
                                  f"{len(small)} of {len(names)} layers ({_span(small)}): "
                                  f"these layers do nothing", float(len(small)),
                "give α its own learning rate (iso.alpha_mask), or drop the inactive layers"))
    return out


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def _stacked_spread(layer_norms: dict):
    """(decades, (name, lo), (name, hi)) of the per-layer gradient norms of stacked layers."""
    stacked = {k: v for k, v in layer_norms.items()
               if k.rsplit("/", 1)[-1].isdigit() and v > 0 and math.isfinite(v)}
    if len(stacked) < 2:
        return None
    lo = min(stacked.items(), key=lambda kv: kv[1])
    hi = max(stacked.items(), key=lambda kv: kv[1])
    return math.log10(hi[1] / lo[1]), lo, hi
