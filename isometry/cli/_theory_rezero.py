"""`isometry theory --variant rezero --alpha 0.1,0.3`: residual nets x + α φ(W x + b) at α > 0.

For every depth and α: the predicted moments m1..m4 of JJᵀ (`isometry.theory`), the
scaling time t = Σ_l α² σ_w² μ₁ and the scaling-limit moments at that t, beside the moments
measured on `--samples` float64 nets (mean and standard error over nets); the predicted density
of log10 σ (`theory.residual_density`) with the measured histogram; theory.json and a
PNG of (a) log10 m_k against k and (b) the densities (`isometry.plot.residual_theory_figure`).
"""

from __future__ import annotations

import math

import numpy as np

from isometry import theory
from isometry._numerics import log10_sigma
from isometry.cli import UsageError
from isometry.cli._report import report, table_stream
from isometry.cli._theory_config import TheoryConfig, sample
from isometry.plot.theory import residual_theory_figure

KEYS = ("m1", "m2", "m3", "m4")
#: points of the predicted density in the JSON, bins of the measured histogram
DENSITY_POINTS, BINS = 200, 60


def histogram_record(sv) -> dict:
    """The measured histogram of log10 σ, normalized as the density (area 1)."""
    density, edges = np.histogram(log10_sigma(np.asarray(sv)).ravel(), bins=BINS, density=True)
    return dict(edges=edges, density=density)


def _record(config: TheoryConfig, depth: int, alpha: float, sigma_w2: float) -> dict:
    """Predicted, scaling-limit and (with samples) measured moments at one (depth, α)."""
    try:
        pred = theory.residual_moments(config.activation, depth, alpha, sigma_w2,
                                                config.sigma_b2, k=4)
        t = theory.scaling_time(config.activation, depth, alpha, sigma_w2,
                                         config.sigma_b2)
    except ValueError as err:
        raise UsageError(str(err)) from None
    rec = dict(depth=depth, alpha=alpha, t=t,
               predicted={k: float(v) for k, v in zip(KEYS, pred)},
               scaling_limit={k: float(v) for k, v in
                              zip(KEYS, theory.scaling_limit_moments(t, 4))})
    rec["predicted"]["nvar"] = float(pred[1] / pred[0] ** 2 - 1)
    try:
        rec["density"] = theory.density_points(theory.residual_density(
            config.activation, depth, alpha, sigma_w2, config.sigma_b2), DENSITY_POINTS)
    except FloatingPointError as err:  # far from α ≪ 1/σ_w the truncated S-transform fails
        rec["density_error"] = str(err)
    if config.samples:
        sv = sample(config, depth, sigma_w2, math.nan, variant="rezero", alpha=alpha)
        rec["measured"] = theory.measured_summary(sv, keys=KEYS + ("nvar",), k=4)
        rec["histogram"] = histogram_record(sv)
    return rec


def compute(config: TheoryConfig) -> dict:
    """The JSON document: one record per (depth, α)."""
    if not config.alphas or any(not (math.isfinite(a) and a > 0) for a in config.alphas):
        raise UsageError(f"--alpha needs positive values for --variant rezero, got "
                         f"{list(config.alphas) or None}")
    sigma_w2 = config.sigma_w2 if config.sigma_w2 is not None else (
        2.0 if config.activation == "relu" else 1.0)
    records = [_record(config, depth, alpha, sigma_w2)
               for depth in config.depths for alpha in config.alphas]
    return dict(variant="rezero", activation=config.activation, weights=config.weights,
                sigma_w2=sigma_w2, sigma_b2=config.sigma_b2, width=config.width,
                samples=config.samples, seed=config.seed, records=records,
                notes="predictions: free probability at large width (bulk of the spectrum; "
                      "ReLU nets add one outlier above the bulk, which raises high moments)")


def print_table(doc: dict, stream) -> None:
    """Predicted and measured moments, one pair of rows per (depth, α)."""
    keys = KEYS + ("nvar",)
    print(f"{'depth':>5} {'alpha':>6} {'t':>7} {'':>9} " + " ".join(f"{k:>11}" for k in keys),
          file=stream)
    for rec in doc["records"]:
        head = f"{rec['depth']:>5} {rec['alpha']:>6g} {rec['t']:>7.3g}"
        print(f"{head} {'theory':>9} " + " ".join(
            f"{rec['predicted'].get(k, math.nan):>11.4g}" for k in keys), file=stream)
        if "measured" in rec:
            print(f"{'':>20} {'measured':>9} " + " ".join(
                f"{rec['measured']['mean'][k]:>11.4g}" for k in keys), file=stream)


def run(config: TheoryConfig) -> int:
    doc = compute(config)
    print_table(doc, table_stream(config.json))
    fig = residual_theory_figure(doc["records"], doc["activation"], doc["width"])
    report(config.out, "theory", fig, doc, config.json)
    return 0
