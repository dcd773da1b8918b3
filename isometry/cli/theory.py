"""`isometry theory`: free-probability predictions of Jacobian spectra beside measured ones.

For plain fully connected nets (x^l = φ(W^l x^{l−1} + b^l)) at the given initialization it
prints and writes the predictions (q*, χ₁, m1..m3, nvar, spectral edge, E[σ]) for every depth
and, unless --samples 0, the same statistics measured on `--samples` float64 nets of width
`--width` (mean and standard error over nets, each probed at an input of length q*), plus an
overlay PNG of measured against predicted densities of log10 σ.

    isometry theory --activation relu --weights orthogonal --depth 4,16 --sigma-w2 2 --out DIR
"""

from __future__ import annotations

import math
import os
import sys

from isometry._io import json_text, write_json
from isometry.cli import UsageError, comma_list, output_dir

KEYS = ("q_star", "chi_1", "m1", "m2", "m3", "nvar", "edge", "mean_sigma", "zero_mass")
MEASURED = ("m1", "m2", "m3", "nvar", "edge", "mean_sigma", "zero_fraction")


def register(sub) -> None:
    from isometry import theory

    p = sub.add_parser("theory", help="predicted vs measured Jacobian spectra of plain FC nets",
                       description=__doc__)
    p.add_argument("--activation", default="relu", choices=sorted(theory.ACTIVATIONS),
                   help="activation (default: relu)")
    p.add_argument("--weights", default="gaussian", choices=theory.WEIGHTS,
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
                   help="comma list of α for --variant rezero, e.g. 0.1,0.3")
    p.set_defaults(func=run)


def probe_input(key, width: int, q_star: float, sigma_w2: float, sigma_b2: float, dtype):
    """A Gaussian direction scaled so that the first pre-activations have variance q*:
    (1/N)||x⁰||² = (q* − σ_b²)/σ_w² (unit length where q* does not exist)."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(key, (width,), dtype)
    if not math.isfinite(q_star):  # no fixed point (linear, ReLU): J does not depend on q
        q_star = sigma_w2 + sigma_b2
    target = max(q_star - sigma_b2, 0.0) / sigma_w2
    return x * jnp.sqrt(target * width) / jnp.linalg.norm(x)


def sample_singular_values(*, activation: str, weights: str, depth: int, width: int,
                           sigma_w2: float, sigma_b2: float, samples: int, q_star: float,
                           seed: int = 0, variant: str = "plain", alpha: float = 0.0):
    """Singular values (samples, width) of `samples` float64 FC nets, one seed each.

    One compiled `spectrum_fn` serves every seed (same shapes, new parameter values).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import isometry as iso
    import models

    jax.config.update("jax_enable_x64", True)
    sfn, out = None, []
    for i in range(samples):
        net = models.FullyConnected(depth, width, variant=variant, activation=activation,
                                    alpha_init=alpha, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                                    weights=weights, param_dtype=jnp.float64,
                                    rngs=nnx.Rngs(seed + i))
        apply_fn, params = iso.from_nnx(net)
        if sfn is None:
            sfn = iso.spectrum_fn(apply_fn, "dense")
        x = probe_input(jax.random.key(10_000 + seed + i), width, q_star, sigma_w2, sigma_b2,
                        jnp.float64)
        out.append(np.asarray(sfn(params, x).singular_values))
    return np.stack(out)


def measured_summary(singular_values) -> dict:
    """Mean and standard error over nets of each statistic in `MEASURED`."""
    from isometry import theory

    stats = theory.spectrum_moments(singular_values)
    mean, se = {}, {}
    for key in MEASURED:
        mean[key], se[key] = theory.mean_and_sem(stats[key])
    return dict(mean=mean, se=se)


def _check(args) -> None:
    if not args.depth or any(d < 1 for d in args.depth):
        raise UsageError(f"--depth needs positive depths, got {args.depth}")
    if args.width < 1:
        raise UsageError(f"--width must be positive, got {args.width}")
    if args.samples < 0 or args.samples == 1:
        raise UsageError(f"--samples must be 0 (predictions only) or at least 2 (for a standard "
                         f"error), got {args.samples}")
    if args.sigma_w2 is not None and not (math.isfinite(args.sigma_w2) and args.sigma_w2 > 0):
        raise UsageError(f"--sigma-w2 must be positive, got {args.sigma_w2}")
    if not (math.isfinite(args.sigma_b2) and args.sigma_b2 >= 0):
        raise UsageError(f"--sigma-b2 must be non-negative, got {args.sigma_b2}")
    if args.bins < 1:
        raise UsageError(f"--bins must be positive, got {args.bins}")


def compute(args) -> tuple[dict, list, list]:
    """(the JSON document, the predictions, the measured singular values or Nones)."""
    from isometry import theory

    _check(args)
    try:
        sigma_w2 = (args.sigma_w2 if args.sigma_w2 is not None
                    else theory.critical_sigma_w2(args.activation, args.sigma_b2))
        preds = [theory.predict_spectrum(args.activation, d, sigma_w2, args.sigma_b2, args.weights)
                 for d in args.depth]
    except ValueError as err:
        raise UsageError(str(err)) from None
    records, measured = [], []
    for pred in preds:
        record = dict(depth=pred.depth, predicted=pred.summary())
        sv = None
        if args.samples:
            sv = sample_singular_values(activation=args.activation, weights=args.weights,
                                        depth=pred.depth, width=args.width, sigma_w2=sigma_w2,
                                        sigma_b2=args.sigma_b2, samples=args.samples,
                                        q_star=pred.q_star, seed=args.seed)
            record["measured"] = measured_summary(sv)
        records.append(record)
        measured.append(sv)
    doc = dict(activation=args.activation, weights=args.weights, sigma_w2=sigma_w2,
               sigma_b2=args.sigma_b2, width=args.width, samples=args.samples, seed=args.seed,
               notes="predictions are N → ∞ limits; measured: mean and standard error over nets "
                     "(finite width biases nvar up and the largest λ below the edge)",
               records=records)
    return doc, preds, measured


def _fmt(x) -> str:
    return f"{x:.4g}"


def run(args) -> int:
    from isometry import plot

    _check(args)
    output_dir(args.out)  # before computing: a path that cannot be written fails at once
    if args.variant == "rezero":  # residual nets at α > 0: moments (isometry.theory_residual)
        from isometry.cli import _theory_rezero
        return _theory_rezero.run(args)
    doc, preds, measured = compute(args)
    table = sys.stderr if args.json else sys.stdout
    print(f"{'depth':>5} {'':>9} " + " ".join(f"{k:>10}" for k in KEYS), file=table)
    for rec in doc["records"]:
        p = rec["predicted"]
        print(f"{rec['depth']:>5} {'theory':>9} " + " ".join(f"{_fmt(p[k]):>10}" for k in KEYS),
              file=table)
        if "measured" in rec:
            m = rec["measured"]["mean"]
            row = [_fmt(m[k]) if k in m else "" for k in KEYS]
            if "zero_fraction" in m:
                row[-1] = _fmt(m["zero_fraction"])
            print(f"{'':>5} {'measured':>9} " + " ".join(f"{v:>10}" for v in row), file=table)
    title = (f"{args.activation}, {args.weights} weights, σ_w²={doc['sigma_w2']:.6g}, "
             f"σ_b²={args.sigma_b2:g}: measured (N={args.width}) vs theory")
    png = plot.save(plot.theory_overlay(preds, measured, bins=args.bins, title=title),
                    os.path.join(args.out, "theory.png"))
    path = os.path.join(args.out, "theory.json")
    write_json(path, doc, indent=1)  # strict JSON: NaN/Inf as null, the reason beside it
    print(f"wrote {png} and {path}", file=sys.stderr)
    if args.json:  # the same document as theory.json
        sys.stdout.write(json_text(doc) + "\n")
    return 0
