"""`isometry theory --variant rezero --alpha 0.1,0.3`: residual nets x + α φ(W x + b) at α > 0.

For every depth and α: the predicted moments m1..m4 of JJᵀ (`isometry.theory_residual`), the
scaling time t = Σ_l α² σ_w² μ₁ and the scaling-limit moments at that t, beside the moments
measured on `--samples` float64 nets (mean and standard error over nets); theory.json and an
overlay PNG of log10 m_k against k (measured with error bars, predicted as lines).
"""

from __future__ import annotations

import math
import os
import sys

KEYS = ("m1", "m2", "m3", "m4")


def compute(args) -> dict:
    import numpy as np

    from isometry import theory
    from isometry import theory_residual as tr
    from isometry.cli import UsageError
    from isometry.cli.theory import sample_singular_values

    if not args.alpha or any(not (math.isfinite(a) and a > 0) for a in args.alpha):
        raise UsageError(f"--alpha needs positive values for --variant rezero, got {args.alpha}")
    sigma_w2 = args.sigma_w2 if args.sigma_w2 is not None else (
        2.0 if args.activation == "relu" else 1.0)
    records = []
    for depth in args.depth:
        for alpha in args.alpha:
            try:
                pred = tr.residual_moments(args.activation, depth, alpha, sigma_w2, args.sigma_b2,
                                           k=4)
                t = tr.scaling_time(args.activation, depth, alpha, sigma_w2, args.sigma_b2)
            except ValueError as err:
                raise UsageError(str(err)) from None
            rec = dict(depth=depth, alpha=alpha, t=t,
                       predicted={k: float(v) for k, v in zip(KEYS, pred)},
                       scaling_limit={k: float(v) for k, v in
                                      zip(KEYS, tr.scaling_limit_moments(t, 4))})
            rec["predicted"]["nvar"] = float(pred[1] / pred[0] ** 2 - 1)
            if args.samples:
                sv = sample_singular_values(activation=args.activation, weights=args.weights,
                                            depth=depth, width=args.width, sigma_w2=sigma_w2,
                                            sigma_b2=args.sigma_b2, samples=args.samples,
                                            q_star=math.nan, seed=args.seed, variant="rezero",
                                            alpha=alpha)
                stats = theory.spectrum_moments(np.asarray(sv), k=4)
                rec["measured"] = {"mean": {}, "se": {}}
                for key in KEYS + ("nvar",):
                    mean, se = theory.mean_and_sem(stats[key])
                    rec["measured"]["mean"][key], rec["measured"]["se"][key] = mean, se
            records.append(rec)
    return dict(variant="rezero", activation=args.activation, weights=args.weights,
                sigma_w2=sigma_w2, sigma_b2=args.sigma_b2, width=args.width,
                samples=args.samples, seed=args.seed, records=records,
                notes="predictions: free probability at large width (bulk of the spectrum; "
                      "ReLU nets add one outlier above the bulk, which raises high moments)")


def figure(doc):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    k = np.arange(1, 5)
    for i, rec in enumerate(doc["records"]):
        color = f"C{i % 10}"
        label = f"L={rec['depth']}, α={rec['alpha']:g} (t={rec['t']:.3g})"
        ax.plot(k, [math.log10(rec["predicted"][f"m{j}"]) for j in k], "-", color=color,
                label=label)
        ax.plot(k, [math.log10(rec["scaling_limit"][f"m{j}"]) for j in k], ":", color=color)
        if "measured" in rec:
            m = np.array([rec["measured"]["mean"][f"m{j}"] for j in k])
            se = np.array([rec["measured"]["se"][f"m{j}"] for j in k])
            ax.errorbar(k, np.log10(m), yerr=se / (m * math.log(10)), fmt="o", color=color,
                        markersize=4, capsize=2)
    ax.set_xticks(k)
    ax.set_xlabel("k")
    ax.set_ylabel(r"$\log_{10} m_k$ of $JJ^T$")
    ax.set_title(f"ReZero {doc['activation']} nets: measured (N={doc['width']}, dots), "
                 f"theory (lines), scaling limit (dotted)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def run(args) -> int:
    import json

    from isometry import plot
    from isometry._io import jsonable, write_json

    doc = compute(args)
    table = sys.stderr if args.json else sys.stdout
    print(f"{'depth':>5} {'alpha':>6} {'t':>7} {'':>9} " + " ".join(f"{k:>11}" for k in
                                                                  KEYS + ("nvar",)), file=table)
    for rec in doc["records"]:
        head = f"{rec['depth']:>5} {rec['alpha']:>6g} {rec['t']:>7.3g}"
        print(f"{head} {'theory':>9} " + " ".join(
            f"{rec['predicted'].get(k, math.nan):>11.4g}" for k in KEYS + ("nvar",)), file=table)
        if "measured" in rec:
            print(f"{'':>20} {'measured':>9} " + " ".join(
                f"{rec['measured']['mean'][k]:>11.4g}" for k in KEYS + ("nvar",)), file=table)
    os.makedirs(args.out, exist_ok=True)
    png = plot.save(figure(doc), os.path.join(args.out, "theory.png"))
    path = write_json(os.path.join(args.out, "theory.json"), doc, indent=1)
    print(f"wrote {png} and {path}", file=sys.stderr)
    if args.json:
        json.dump(jsonable(doc), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    return 0
