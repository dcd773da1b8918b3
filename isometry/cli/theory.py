"""`isometry theory`: free-probability predictions of Jacobian spectra beside measured ones.

For plain fully connected nets (x^l = φ(W^l x^{l−1} + b^l)) at the given initialization it
prints and writes the predictions (q*, χ₁, m1..m3, nvar, spectral edge, E[σ]) for every depth
and, unless --samples 0, the same statistics measured on `--samples` float64 nets of width
`--width` (mean and standard error over nets, each probed at an input of length q*), plus an
overlay PNG of measured against predicted densities of log10 σ.

Example:

    isometry theory --activation relu --weights orthogonal --depth 4,16 --sigma-w2 2 --out DIR
    isometry theory --variant rezero --alpha 0.1,0.3 --activation tanh --depth 8
"""

from __future__ import annotations

import argparse

from isometry.cli import UsageError, comma_list, output_dir
from isometry.cli._names import ACTIVATIONS, WEIGHTS
from isometry.cli._report import report, table_stream
from isometry.cli._theory_config import TheoryConfig, sample

# The theory (scipy, jax) and the figures (matplotlib) are imported by the functions that use
# them, after the checks of the arguments: an argument error answers without loading them.

KEYS = ("q_star", "chi_1", "m1", "m2", "m3", "nvar", "edge", "mean_sigma", "zero_mass")


def register(sub) -> None:
    p = sub.add_parser("theory", help="predicted vs measured Jacobian spectra of plain FC nets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activation", default="relu", choices=ACTIVATIONS,
                   help="activation (default: relu)")
    p.add_argument("--weights", default="gaussian", choices=WEIGHTS,
                   help="Gaussian N(0, σ_w²/N) or orthogonal σ_w·O weights (default: gaussian)")
    p.add_argument("--depth", type=comma_list(int), default=[4, 16],
                   help="comma list of depths (default: 4,16)")
    p.add_argument("--sigma-w2", type=float, default=None,
                   help="weight variance × width (default: critical, χ₁ = 1)")
    p.add_argument("--sigma-b2", type=float, default=0.0, help="bias variance (default: 0)")
    p.add_argument("--width", type=int, default=256, help="width of measured nets (default: 256)")
    p.add_argument("--samples", type=int, default=4,
                   help="measured nets per depth; 0 = predictions only (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--bins", type=int, default=60, help="histogram bins (default: 60)")
    p.add_argument("--out", default="isometry-theory",
                   help="directory for theory.png and theory.json (default: ./isometry-theory)")
    p.add_argument("--json", action="store_true", help="print the JSON on stdout")
    p.add_argument("--variant", default="plain", choices=("plain", "rezero"),
                   help="plain nets, or ReZero nets x + α·φ(Wx + b) at the --alpha values")
    p.add_argument("--alpha", type=comma_list(float), default=None,
                   help="comma list of α for --variant rezero, e.g. 0.1,0.3 (needed there; "
                        "plain nets have no α)")
    p.set_defaults(func=run)


def compute(config: TheoryConfig) -> tuple[dict, list, list]:
    """(the JSON document, the predictions, the measured singular values or Nones)."""
    from isometry import theory

    try:
        sigma_w2 = (config.sigma_w2 if config.sigma_w2 is not None
                    else theory.critical_sigma_w2(config.activation, config.sigma_b2))
        preds = [theory.predict_spectrum(config.activation, d, sigma_w2, config.sigma_b2,
                                         config.weights) for d in config.depths]
    except ValueError as err:
        raise UsageError(str(err)) from None
    records, measured = [], []
    for pred in preds:
        record = dict(depth=pred.depth, predicted=pred.to_dict())
        sv = sample(config, pred.depth, sigma_w2, pred.q_star) if config.samples else None
        if sv is not None:
            record["measured"] = theory.measured_summary(sv)
        records.append(record)
        measured.append(sv)
    doc = dict(activation=config.activation, weights=config.weights, sigma_w2=sigma_w2,
               sigma_b2=config.sigma_b2, width=config.width, samples=config.samples,
               seed=config.seed,
               notes="predictions are N → ∞ limits; measured: mean and standard error over nets "
                     "(finite width biases nvar up and the largest λ below the edge)",
               records=records)
    return doc, preds, measured


def _fmt(x) -> str:
    return f"{x:.4g}"


def print_table(doc: dict, stream) -> None:
    """Predicted and measured statistics, one pair of rows per depth."""
    print(f"{'depth':>5} {'':>9} " + " ".join(f"{k:>10}" for k in KEYS), file=stream)
    for rec in doc["records"]:
        p = rec["predicted"]
        print(f"{rec['depth']:>5} {'theory':>9} " + " ".join(f"{_fmt(p[k]):>10}" for k in KEYS),
              file=stream)
        if "measured" in rec:
            m = rec["measured"]["mean"]
            row = [_fmt(m[k]) if k in m else "" for k in KEYS]
            if "zero_fraction" in m:
                row[-1] = _fmt(m["zero_fraction"])
            print(f"{'':>5} {'measured':>9} " + " ".join(f"{v:>10}" for v in row), file=stream)


def run(args) -> int:
    config = TheoryConfig.from_args(args)
    output_dir(config.out)  # before computing: a path that cannot be written fails at once
    if config.variant == "rezero":  # residual nets at α > 0: moments (isometry.theory)
        from isometry.cli import _theory_rezero

        return _theory_rezero.run(config)
    # matplotlib: imported when the command runs, so that `isometry --help` starts fast
    from isometry import plot

    doc, preds, measured = compute(config)
    print_table(doc, table_stream(config.json))
    title = (f"{config.activation}, {config.weights} weights, σ_w²={doc['sigma_w2']:.6g}, "
             f"σ_b²={config.sigma_b2:g}: measured (N={config.width}) vs theory")
    fig = plot.theory_overlay(preds, measured, bins=config.bins, title=title)
    report(config.out, "theory", fig, doc, config.json)
    return 0
