"""Figure 2: the toy model x_L = (1 + αw)^L x_0 — log gradient norm over (w, α) and the
gradient-descent paths from α = 0 (the model is `isometry.toy`, the figure `plot.toy_figure2`).

`figure2(settings)` computes a `Figure2` (frozen dataclass of the toy's results: a
`toy.GradientGrid` and one `toy.Trajectory` per kind of path); `record(result)` is the one
fig2.json schema, written both by `isometry toy` and by `isometry reproduce fig2`. The record
keeps the setup, per path its start, end and how it stopped, the contour grid and every path
(thinned to at most `MAX_POINTS` points); `figure(record)` and `markdown(record)` draw from it.

Example:
    >>> s = Figure2Settings(grid_size=8, max_steps=2000, w_starts=(1.0,), residual=False)
    >>> rec = record(figure2(s))
    >>> round(rec["solution_product"], 4), rec["rezero"][0]["converged"]
    (1.1867, True)
    >>> sorted(rec["grid"]), sorted(rec["paths"])
    (['alpha', 'log_grad_norm', 'w'], ['rezero'])
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from isometry import plot, toy
from isometry._io import jsonable
from isometry.experiments._report import markdown_table, paper_differences

__all__ = ["Figure2Settings", "Figure2", "figure2", "record", "SETTINGS", "MAX_POINTS", "run",
           "figure", "markdown", "PAPER_DIFFERENCES"]

MAX_POINTS = 400
#: How `--scale paper` differs from the paper, and the choices the paper leaves open (written
#: into fig2.md).
PAPER_DIFFERENCES = (
    "As the paper: L = 5, target x_L = 50·x_0, training set x_0 ∈ {1.0, 1.1, …, 1.8}, plain "
    "gradient descent, five paths from α = 0, contour of log ‖∂C‖² over (w, α).",
    "The paper states neither the learning rate, the five initial w, the number of steps nor "
    "the plotted range: ours are λ = 5e-6, w₀ ∈ {−1.5, −0.75, 0.5, 1, 1.75}, at most 20,000 "
    "steps to a loss of 1e-8, w ∈ [−2.5, 2.5], α ∈ [−1.5, 1.5] on a 400² grid.",
    "The cost is the mean over the nine inputs of (x_L − 50·x_0)²; the paper does not say "
    "whether it sums or averages.",
    "The residual paths with α fixed at 1 from the same w₀ are our addition for contrast; the "
    "paper's figure shows the ReZero paths only.")


@dataclasses.dataclass(frozen=True)
class Figure2Settings:
    """Everything that defines Figure 2 (defaults: the paper's setup, §3.1).

    Attributes:
      depth, target, inputs: the task (`toy.toy_problem`).
      w_starts: initial w of the ReZero trajectories, which all start at α = 0.
      lr: gradient-descent learning rate λ (the α = 1 bound at L = 5 is 3.8e-5).
      max_steps, tol: descent budget and loss tolerance (`toy.descend`).
      w_range, alpha_range: extent of the contour grid.
      grid_size: grid points along each axis.
      residual: also run the vanilla residual toy (α fixed at 1) from the same w starts.
    """

    depth: int = 5
    target: float = 50.0
    inputs: tuple[float, ...] = toy.FIGURE2_INPUTS
    w_starts: tuple[float, ...] = (-1.5, -0.75, 0.5, 1.0, 1.75)
    lr: float = 5e-6
    max_steps: int = 20_000
    tol: float = 1e-8
    w_range: tuple[float, float] = (-2.5, 2.5)
    alpha_range: tuple[float, float] = (-1.5, 1.5)
    grid_size: int = 400
    residual: bool = True

    def problem(self) -> toy.ToyProblem:
        return toy.toy_problem(self.depth, self.target, self.inputs)

    def check(self) -> "Figure2Settings":
        """Raises ValueError naming the first bad setting; returns self."""
        self.problem()
        if not self.w_starts:
            raise ValueError("w_starts must hold at least one initial w")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        toy.check_budget(self.max_steps, self.tol)
        for name in ("w_range", "alpha_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)!r}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be at least 2, got {self.grid_size!r}")
        return self


SETTINGS = {
    "smoke": Figure2Settings(grid_size=60, max_steps=3_000, w_starts=(-1.5, 0.5, 1.75)),
    "cpu": Figure2Settings(),
    "paper": Figure2Settings(),
}


@dataclasses.dataclass(frozen=True)
class Figure2:
    """The data of Figure 2: the gradient contour grid and the descent trajectories.

    Attributes:
      settings: the `Figure2Settings` used.
      problem: the `toy.ToyProblem`.
      grid: log ‖∂C‖² over (w, α) (`toy.GradientGrid`).
      rezero: one `toy.Trajectory` per w start (leading axis), from α = 0, α trained.
      residual: the same starts with α fixed at 1 (None unless `settings.residual`).
      second_moment: ⟨x²⟩ of the inputs.
      solution_product: αw on the zero-loss curve, T^{1/L} − 1.
      residual_bound: `toy.stability_bound` for α = 1.
    """

    settings: Figure2Settings
    problem: toy.ToyProblem
    grid: toy.GradientGrid
    rezero: toy.Trajectory
    residual: toy.Trajectory | None
    second_moment: float
    solution_product: float
    residual_bound: float

    def to_dict(self) -> dict:
        """The fig2.json record (`record`)."""
        return record(self)


def figure2(settings: Figure2Settings | None = None) -> Figure2:
    """Computes Figure 2: the contour grid and the trajectories (`figure` draws its record).

    Runs in float64 whatever the global setting (the toy is tiny; the loss tolerance needs it).

    Args:
      settings: a `Figure2Settings` (default: the paper's).

    Returns:
      A `Figure2`.
    """
    s = (settings or Figure2Settings()).check()
    with jax.enable_x64(True):
        problem = s.problem()
        w = jnp.linspace(*s.w_range, s.grid_size)
        alpha = jnp.linspace(*s.alpha_range, s.grid_size)
        grid = toy.gradient_grid(problem, w, alpha)
        starts = jnp.asarray(s.w_starts, problem.target.dtype)

        def descents(alpha0, train_alpha):  # one call per start: a vmapped recording loop is slow
            paths = [toy.descend(problem, w0, alpha0, s.lr, train_alpha=train_alpha,
                                 max_steps=s.max_steps, tol=s.tol) for w0 in starts]
            return jax.tree.map(lambda *v: jnp.stack(v), *paths)

        rezero = descents(0.0, True)
        residual = descents(1.0, False) if s.residual else None
        return Figure2(s, problem, *jax.device_get((grid, rezero, residual)),
                       float(problem.second_moment), float(problem.solution_product),
                       float(toy.stability_bound(problem, 1.0)))


# --- the record (fig2.json) ---------------------------------------------------------------------
def _trajectory_records(t: toy.Trajectory) -> list[dict]:
    t = jax.device_get(t)
    return [dict(w0=float(t.w[i, 0]), alpha0=float(t.alpha[i, 0]), final_w=float(t.final_w[i]),
                 final_alpha=float(t.final_alpha[i]), final_product=float(t.final_product[i]),
                 final_loss=float(t.final_loss[i]), steps=int(t.steps[i]),
                 converged=bool(t.converged[i]), diverged=bool(t.diverged[i]))
            for i in range(t.steps.shape[0])]


def _paths(t: toy.Trajectory) -> list[dict]:
    out = []
    for i, n in enumerate(np.asarray(t.steps)):
        keep = np.unique(np.linspace(0, int(n), min(int(n) + 1, MAX_POINTS)).astype(int))
        out.append({"step": keep, "w": np.asarray(t.w)[i, keep], "alpha": np.asarray(t.alpha)[i, keep]})
    return out


def record(result: Figure2) -> dict:
    """The one fig2.json schema (strict-JSON ready, `isometry._io.jsonable`): name, settings,
    setup, solution_product, residual_stability_bound, per kind of path ("rezero", "residual")
    one summary per start, the contour grid and the (thinned) paths."""
    s, g = result.settings, result.grid
    kinds = {"rezero": result.rezero}
    if result.residual is not None:
        kinds["residual"] = result.residual
    setup = dict(depth=s.depth, target=s.target, inputs=list(s.inputs),
                 second_moment=result.second_moment,
                 loss="C = (1/n) sum_k ((1 + alpha w)^L x_k - T x_k)^2", lr=s.lr,
                 max_steps=s.max_steps, tol=s.tol, w_range=list(s.w_range),
                 alpha_range=list(s.alpha_range), grid_size=s.grid_size)
    return jsonable({
        "name": "fig2", "settings": dataclasses.asdict(s), "setup": setup,
        "solution_product": result.solution_product,
        "residual_stability_bound": result.residual_bound,
        **{kind: _trajectory_records(t) for kind, t in kinds.items()},
        "grid": {"w": np.asarray(g.w), "alpha": np.asarray(g.alpha),
                 "log_grad_norm": np.asarray(g.log_grad_norm)},
        "paths": {kind: _paths(t) for kind, t in kinds.items()}})


# --- the experiment protocol (`isometry reproduce fig2`) ----------------------------------------
def run(s: Figure2Settings, *, data_dir=None, seed: int = 0, runs_dir: str = "") -> dict:
    """Computes Figure 2's record (no data, no randomness: `data_dir` and `seed` are unused)."""
    return record(figure2(s))


def figure(rec: dict, *, residual: bool = True):
    """`plot.toy_figure2` on the record's grid and paths (None in the JSON reads as NaN)."""
    g, s = rec["grid"], rec["settings"]
    paths = {kind: [(np.asarray(p["w"], float), np.asarray(p["alpha"], float))
                    for p in rec["paths"][kind]]
             for kind in ("rezero", "residual") if kind in rec["paths"]}
    if not residual:
        paths.pop("residual", None)
    return plot.toy_figure2(np.asarray(g["w"], float), np.asarray(g["alpha"], float),
                            np.asarray(g["log_grad_norm"], float), paths,
                            solution_product=rec["solution_product"], depth=s["depth"],
                            target=s["target"], lr=s["lr"])


def _outcome(t: dict) -> str:
    return "converged" if t["converged"] else ("diverged" if t["diverged"] else "budget exhausted")


def markdown(rec: dict) -> str:
    target = rec["solution_product"]
    rows = [[f"ReZero from w₀ = {t['w0']:g}, α₀ = 0", t["final_w"], t["final_alpha"],
             t["final_product"], t["steps"], _outcome(t)] for t in rec["rezero"]]
    rows += [[f"residual (α = 1) from w₀ = {t['w0']:g}", t["final_w"], t["final_alpha"],
              t["final_product"], t["steps"], _outcome(t)] for t in rec.get("residual", [])]
    ok = [t for t in rec["rezero"] if t["converged"]]
    hit = all(abs(t["final_product"] - target) < 1e-3 * abs(target) for t in ok) if ok else False
    s = rec["settings"]
    verdict = (f"**Outcome:** {len(ok)} of {len(rec['rezero'])} ReZero paths converge, all to "
               f"αw ≈ {target:.4f} = T^(1/L) − 1 as in the paper." if ok and hit else
               f"**Outcome:** {len(ok)} of {len(rec['rezero'])} ReZero paths converged within "
               f"{s['max_steps']} steps; the paper's picture (all reach αw = {target:.4f}) "
               f"{'is only partly reproduced' if ok else 'is not reproduced'} at this budget.")
    return "\n".join([
        "# Figure 2: the toy model x_L = (1 + αw)^L x_0\n",
        f"L = {s['depth']}, target T = {s['target']:g}, λ = {s['lr']:g}, at most "
        f"{s['max_steps']} steps, grid {s['grid_size']}². Stability bound of the α = 1 residual "
        f"toy: λ < {rec['residual_stability_bound']:.3g}.\n",
        markdown_table(["path", "final w", "final α", "final αw", "steps", "end"], rows),
        f"Paper: paths from α = 0 avoid the region around α ≈ 1 and converge to "
        f"αw = 50^(1/5) − 1 ≈ 1.187.\n", verdict + "\n",
        paper_differences(PAPER_DIFFERENCES, rec.get("scale"))])
