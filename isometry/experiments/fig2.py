"""Figure 2: the toy model x_L = (1 + αw)^L x_0 — log gradient norm over (w, α) and the
gradient-descent paths from α = 0 (`isometry.toy.figure2`, drawn by `plot.toy_figure2`).

The record keeps the contour grid and every path (thinned to at most `MAX_POINTS` points), and
the figure is drawn from the record.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np

from isometry.experiments._report import markdown_table
from isometry.toy import Figure2Settings

MAX_POINTS = 400

SETTINGS = {
    "smoke": Figure2Settings(grid_size=60, max_steps=3_000, w_starts=(-1.5, 0.5, 1.75)),
    "cpu": Figure2Settings(),
    "paper": Figure2Settings(),
}


def _paths(traj) -> list[dict]:
    out = []
    for i, n in enumerate(np.asarray(traj.steps)):
        keep = np.unique(np.linspace(0, int(n), min(int(n) + 1, MAX_POINTS)).astype(int))
        out.append({"step": keep, "w": np.asarray(traj.w)[i, keep],
                    "alpha": np.asarray(traj.alpha)[i, keep]})
    return out


def run(s: Figure2Settings, *, data_dir=None, seed: int = 0, runs_dir: str = "") -> dict:
    """Computes Figure 2 (no data, no randomness: `data_dir` and `seed` are unused)."""
    from isometry import toy

    result = toy.figure2(s)
    g = result.grid
    return {"name": "fig2", "settings": dataclasses.asdict(s), **result.to_json(),
            "grid": {"w": np.asarray(g.w), "alpha": np.asarray(g.alpha),
                     "log_grad_norm": np.asarray(g.log_grad_norm)},
            "paths": {"rezero": _paths(result.rezero),
                      **({"residual": _paths(result.residual)} if result.residual is not None else {})}}


def _trajectory(paths):
    n = max(len(p["w"]) for p in paths)
    pad = lambda key: np.array([np.pad(np.asarray(p[key], float), (0, n - len(p[key])),
                                       constant_values=np.nan) for p in paths])
    return SimpleNamespace(steps=np.array([len(p["w"]) - 1 for p in paths]), w=pad("w"),
                           alpha=pad("alpha"))


def figure(record: dict):
    """`plot.toy_figure2` on the record's grid and paths."""
    from isometry import plot

    g = record["grid"]
    none_to_nan = lambda a: np.array([[np.nan if v is None else v for v in row] for row in a])
    result = SimpleNamespace(
        grid=SimpleNamespace(w=np.asarray(g["w"]), alpha=np.asarray(g["alpha"]),
                             log_grad_norm=none_to_nan(g["log_grad_norm"])),
        solution_product=record["solution_product"],
        rezero=_trajectory(record["paths"]["rezero"]),
        residual=_trajectory(record["paths"]["residual"]) if "residual" in record["paths"] else None,
        settings=SimpleNamespace(**record["settings"]))
    return plot.toy_figure2(result)


def markdown(record: dict) -> str:
    target = record["solution_product"]
    rows = [[f"ReZero from w₀ = {t['w0']:g}, α₀ = 0", t["final_w"], t["final_alpha"],
             t["final_product"], t["steps"], "converged" if t["converged"] else
             ("diverged" if t["diverged"] else "budget exhausted")] for t in record["rezero"]]
    rows += [[f"residual (α = 1) from w₀ = {t['w0']:g}", t["final_w"], t["final_alpha"],
              t["final_product"], t["steps"], "converged" if t["converged"] else
              ("diverged" if t["diverged"] else "budget exhausted")]
             for t in record.get("residual", [])]
    ok = [t for t in record["rezero"] if t["converged"]]
    hit = all(abs(t["final_product"] - target) < 1e-3 * abs(target) for t in ok) if ok else False
    s = record["settings"]
    verdict = (f"**Outcome:** {len(ok)} of {len(record['rezero'])} ReZero paths converge, all to "
               f"αw ≈ {target:.4f} = T^(1/L) − 1 as in the paper." if ok and hit else
               f"**Outcome:** {len(ok)} of {len(record['rezero'])} ReZero paths converged within "
               f"{s['max_steps']} steps; the paper's picture (all reach αw = {target:.4f}) "
               f"{'is only partly reproduced' if ok else 'is not reproduced'} at this budget.")
    return "\n".join([
        "# Figure 2: the toy model x_L = (1 + αw)^L x_0\n",
        f"L = {s['depth']}, target T = {s['target']:g}, λ = {s['lr']:g}, at most "
        f"{s['max_steps']} steps, grid {s['grid_size']}². Stability bound of the α = 1 residual "
        f"toy: λ < {record['residual_stability_bound']:.3g}.\n",
        markdown_table(["path", "final w", "final α", "final αw", "steps", "end"], rows),
        f"Paper: paths from α = 0 avoid the region around α ≈ 1 and converge to "
        f"αw = 50^(1/5) − 1 ≈ 1.187.\n", verdict + "\n"])
