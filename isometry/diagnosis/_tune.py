"""Tune initialization scales to dynamical isometry: χ = 1, or the most σ in [0.5, 2].

`tune_init(build, scale_names, x, target=...)` finds the value of a scalar a model builder takes
(σ_w², σ_b², α_init, a gain — anything) that puts the model at

* target "chi" (or a number c): ln χ = ln c, χ = ‖J‖_F²/n_in of J = ∂x_L/∂x_0 (the stack's
  Jacobian for an `isometry.LayerStack`, the whole model's otherwise);
* target "isometry": the largest share of σ(J) in `ISOMETRY_BAND` = [0.5, 2].

Two ways:

* **mean field**, where it applies — a plain fully connected net (`mean_field=` names its
  activation and the other variance): the critical line χ₁(σ_w², σ_b²) = 1 of
  `theory.critical_sigma_w2` (tanh, σ_b² = 0.05 → σ_w² = 1.760955), exact in the wide limit;
* **measured**: f(s) = ln[(1/n) Σ_i χ_i(s)] − ln c over n seeds (the same seeds at every s —
  common random numbers — so f is smooth in s; the mean of χ, not of ln χ, because mean field
  predicts E[m₁] = χ₁^L while E ln χ falls short of it by about Var(ln χ)/2), a bracket
  grown geometrically from the default until f changes sign, then Brent's method on ln s.
  The uncertainty of the root is the delta method, se(s*) = se(f(s*)) / |f′(s*)|,
  se(f) = sd_i χ_i(s*) / (√n · mean χ) (nets differ: relative sd ~ √(L/N) for plain nets,
  so se(s*) ~ 1/√(L·N·n)), f′ from a central difference. The standard error rests on n − 1
  degrees of freedom: with 3 seeds it is itself uncertain by about half its size (a 95%
  interval is ± 4.3 se for n = 3, ± 2.6 se for n = 6); use more seeds when it matters.

Either way the result reports the tuned values beside the defaults with both spectra.

Example:
    >>> import jax, models
    >>> def build(sigma_w2, rngs):
    ...     return models.FullyConnected(8, 16, variant="plain", activation="tanh",
    ...                                  sigma_w2=sigma_w2, sigma_b2=0.05, rngs=rngs)
    >>> x = 0.4 * jax.random.normal(jax.random.key(0), (16,))
    >>> r = tune_init(build, "sigma_w2", x, defaults={"sigma_w2": 1.0}, seeds=(0,),
    ...               mean_field=dict(activation="tanh", sigma_b2=0.05))
    >>> r.method, round(r.values["sigma_w2"], 6), r.objective > r.default_objective
    ('mean_field', 1.760955, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import optimize

from isometry import theory
from isometry.diagnosis._programs import cached_jit, module_fns
from isometry._io import jsonable
from isometry._numerics import check_setting
from isometry.spectrum._engine import Dense, dense_settings
from isometry.spectrum._function import ISOMETRY_BAND, Spectrum, spectrum_fn
from isometry.spectrum._protocol import deprecated
from isometry._stack import LayerStack

__all__ = ["TuneResult", "tune_init", "Evaluator", "objective"]

TARGETS = ("chi", "isometry")


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What `tune_init` found.

    Attributes:
      values: {name: tuned value}; defaults: {name: value before tuning}.
      stderr: {name: standard error of the tuned value} (0 for mean field).
      method: "mean_field" or "measured".
      target: "chi", "isometry" or the target χ.
      objective, objective_stderr: at the tuned values, ln(mean χ over seeds) − ln c (target
        "chi"/number) or the mean share of σ in [0.5, 2] ("isometry"), and its standard error.
      default_objective, default_objective_stderr: the same at the defaults.
      spectra: {"default": Spectrum, "tuned": Spectrum} of the first seed.
      evaluations: [(value, mean objective, stderr)] in the order they were computed.
    """

    values: dict
    defaults: dict
    stderr: dict
    method: str
    target: Any
    objective: float
    objective_stderr: float
    default_objective: float
    default_objective_stderr: float
    spectra: dict
    evaluations: list

    def to_dict(self) -> dict:
        """Plain data, strict-JSON-ready: every field, the spectra as their `to_dict()` under
        "default_spectrum" and "tuned_spectrum" (statistics, not every σ)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "spectra"}
        for name in ("default", "tuned"):
            out[f"{name}_spectrum"] = self.spectra[name].to_dict()
        return jsonable(out)

    def summary(self) -> dict:
        """Deprecated: `to_dict()`."""
        deprecated("TuneResult.summary()", "to_dict()")
        return self.to_dict()


class Evaluator:
    """Builds the model at given scales for every seed and measures J = ∂x_L/∂x_0."""

    def __init__(self, build: Callable, x, seeds: Sequence[int], engine: Dense):
        self.build, self.x, self.seeds = build, x, tuple(seeds)
        self.engine = engine
        self._sfns: dict = {}

    def _spectrum_fn(self, key, fn: Callable) -> Callable:
        if key not in self._sfns:
            self._sfns[key] = spectrum_fn(fn, engine=self.engine)
        return self._sfns[key]

    def spectra(self, scales: dict) -> list[Spectrum]:
        """The spectrum of J for every seed, the model built with `scales`."""
        out = []
        for seed in self.seeds:
            module = self.build(**scales, rngs=nnx.Rngs(seed))
            if hasattr(module, "eval"):
                module.eval()
            graphdef, params = nnx.split(module)
            fns = module_fns(graphdef)
            if isinstance(module, LayerStack):
                sfn = self._spectrum_fn(("stack", graphdef), fns["stack"])
                x0 = cached_jit(fns["embed"])(params, self.x)
            else:
                sfn, x0 = self._spectrum_fn(("apply", graphdef), fns["apply"]), self.x
            out.append(sfn(params, x0))
        return out

    def measure(self, scales: dict, target) -> tuple[float, float, list[Spectrum]]:
        """(mean objective, its standard error, the spectra) at `scales`."""
        spectra = self.spectra(scales)
        mean, se, _ = objective(spectra, target)
        return mean, se, spectra


def objective(spectra: list[Spectrum], target) -> tuple[float, float, np.ndarray]:
    """(mean, standard error, per-seed values) of the objective over seeds."""
    if target == "isometry":
        vals = np.array([float(np.mean(s.isometry_share)) for s in spectra])
    else:  # ln of the mean χ over nets: mean field's E[m₁] = χ₁^L (mean ln χ is biased low)
        c = 1.0 if target == "chi" else float(target)
        vals = np.array([float(np.mean(s.chi)) for s in spectra])
        se = float(vals.std(ddof=1) / (math.sqrt(len(vals)) * vals.mean())) if len(
            vals) > 1 else math.nan
        return math.log(float(vals.mean())) - math.log(c), se, vals
    se = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else math.nan
    return float(vals.mean()), se, vals


def _checked(scale_names, target, defaults: dict | None, bracket) -> tuple[tuple, dict]:
    """(names, defaults) after checking the target and that every default is known."""
    names = (scale_names,) if isinstance(scale_names, str) else tuple(scale_names)
    if not names:
        raise ValueError("scale_names must name at least one scale")
    if target not in TARGETS and not (isinstance(target, (int, float)) and target > 0):
        raise ValueError(f"target must be 'chi', 'isometry' or a positive χ, got {target!r}")
    defaults = dict(defaults or {})
    missing = [n for n in names[1:] if n not in defaults]
    if names[0] not in defaults and bracket is None:
        missing.insert(0, names[0])
    if missing:
        raise ValueError(f"give defaults for {missing} (or a bracket for {names[0]!r})")
    if names[0] not in defaults:
        defaults[names[0]] = math.sqrt(bracket[0] * bracket[1])
    return names, defaults


def _critical_line(mean_field: dict, names: tuple, target) -> float:
    """σ_w² on the critical line χ₁ = 1 of mean field (`theory.critical_sigma_w2`)."""
    if target != "chi" or names[0] != "sigma_w2":
        raise ValueError("mean_field tuning finds σ_w² on the critical line χ₁ = 1: use "
                         "target='chi' and tune 'sigma_w2'")
    return theory.critical_sigma_w2(mean_field["activation"],
                                    float(mean_field.get("sigma_b2", 0.0)))


def tune_init(build: Callable, scale_names: str | Sequence[str], x, *, target="chi",
              defaults: dict | None = None, bracket: tuple[float, float] | None = None,
              seeds: Sequence[int] = (0, 1, 2), mean_field: dict | None = None,
              xtol: float = 1e-2, max_expansions: int = 12, engine: Dense | None = None,
              memory_budget: float | None = None) -> TuneResult:
    """Finds the initialization scale that puts a model at χ = 1 (or the most σ in [0.5, 2]).

    Args:
      build: `build(**scales, rngs=nnx.Rngs(seed)) -> nnx.Module`; any scalar keyword works.
      scale_names: the scale to tune (or a sequence: the first is tuned, the others stay at
        `defaults`; for "isometry" every name is tuned in turn, twice).
      x: one probe input of the model (no batch axis).
      target: "chi" (χ = 1), a positive number c (χ = c), or "isometry" (most σ in [0.5, 2]).
      defaults: {name: default value}, required for every name but a tuned one with `bracket`.
      bracket: (lo, hi) > 0 where ln χ − ln c changes sign, or that holds the maximum; default
        grown from the default by factors 2 (at most `max_expansions` steps).
      seeds: the networks averaged over (common random numbers at every value).
      mean_field: {"activation", "sigma_b2"} of a plain FC net tuning "sigma_w2" for "chi":
        the critical line of `theory.critical_sigma_w2` instead of a search.
      xtol: tolerance of the root on ln s.
      engine, memory_budget: the dense engine's settings (`iso.dense(...)`), or its budget in
        bytes for each dense Jacobian as a shorthand.

    Returns:
      A `TuneResult`: tuned values and standard errors beside the defaults, both spectra.

    Raises:
      ValueError: an unknown target, a missing default, or no sign change in the bracket.
    """
    engine = dense_settings(engine, memory_budget, "tune_init")
    names, defaults = _checked(scale_names, target, defaults, bracket)
    if not len(seeds):
        raise ValueError("seeds must name at least one seed (the networks χ is averaged over)")
    check_setting("xtol", xtol, low=0, low_open=True)
    check_setting("max_expansions", max_expansions, low=0, integer=True)
    if bracket is not None and not 0 < bracket[0] < bracket[1]:
        raise ValueError(f"bracket must be (lo, hi) with 0 < lo < hi, got {bracket}")
    measure = functools.partial(Evaluator(build, x, seeds, engine).measure, target=target)
    evaluations: list = []
    d_mean, d_se, d_spectra = measure(defaults)
    values, stderr, method = dict(defaults), {n: 0.0 for n in names}, "measured"
    if mean_field is not None:
        values["sigma_w2"], method = _critical_line(mean_field, names, target), "mean_field"
    elif target == "isometry":
        for _ in range(2 if len(names) > 1 else 1):
            for name in names:
                values[name] = _maximize(name, values, measure, evaluations,
                                         bracket if name == names[0] else None)
    else:
        values[names[0]], stderr[names[0]] = _root(names[0], values, measure, evaluations,
                                                   bracket, xtol, max_expansions)
    t_mean, t_se, t_spectra = measure(values)
    return TuneResult(values, defaults, stderr, method, target, t_mean, t_se, d_mean, d_se,
                      dict(default=d_spectra[0], tuned=t_spectra[0]), evaluations)


def _root(name, values, measure, evaluations, bracket, xtol, max_expansions):
    memo: dict = {}

    def f(t):
        if t not in memo:
            mean, se, _ = measure({**values, name: math.exp(t)})
            evaluations.append((math.exp(t), mean, se))
            memo[t] = mean
        return memo[t]

    if bracket is not None:
        lo, hi = math.log(bracket[0]), math.log(bracket[1])
        f_lo, f_hi = f(lo), f(hi)
    else:
        v0 = float(values[name])
        if not v0 > 0:
            raise ValueError(f"the default of {name!r} is {v0}; a search on ln {name} needs a "
                             f"positive default or a bracket=(lo, hi)")
        lo = hi = math.log(v0)
        f_lo = f_hi = f(lo)
        step = math.log(2.0)
        for _ in range(max_expansions):
            if f_lo * f_hi < 0:
                break
            # move the end that brings f toward 0 (f increasing or decreasing in s: try both)
            lo, f_lo = lo - step, f(lo - step)
            if f_lo * f_hi < 0:
                break
            hi, f_hi = hi + step, f(hi + step)
    if not f_lo * f_hi < 0:
        tried = ", ".join(f"{v:.3g}: {m:+.3g}" for v, m, _ in evaluations)
        raise ValueError(f"ln χ − ln target does not change sign for {name} in "
                         f"[{math.exp(lo):.3g}, {math.exp(hi):.3g}] (value: objective = {tried});"
                         f" give a bracket=(lo, hi) or another target")
    t_star = optimize.brentq(f, lo, hi, xtol=xtol)
    s_star = math.exp(t_star)
    # delta method: se(s*) = se(f(s*)) / |df/ds|, df/ds by a central difference on ln s
    h = max(10 * xtol, 1e-3)
    _, se_f, _ = measure({**values, name: s_star})
    slope = (f(t_star + h) - f(t_star - h)) / (2 * h) / s_star
    return s_star, abs(se_f / slope) if slope else math.inf


def _maximize(name, values, measure, evaluations, bracket):
    v0 = float(values[name])
    lo, hi = (math.log(bracket[0]), math.log(bracket[1])) if bracket else (
        math.log(v0) - math.log(8.0), math.log(v0) + math.log(8.0))

    def negative_share(t):
        mean, se, _ = measure({**values, name: math.exp(t)})
        evaluations.append((math.exp(t), mean, se))
        return -mean

    res = optimize.minimize_scalar(negative_share, bounds=(lo, hi), method="bounded",
                                   options=dict(xatol=0.02, maxiter=25))
    return math.exp(res.x)
