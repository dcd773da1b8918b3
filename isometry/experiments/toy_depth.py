"""Learning rate versus depth on the toy x_L = (1 + αw)^L x_0: residual (α = 1) against ReZero.

For a vanilla residual toy (α fixed at 1) the largest learning rate at which descent converges
shrinks exponentially with depth (`toy.stability_bound`); ReZero (α₀ = 0, α trained) keeps it
polynomial. `depth_sweep(settings)` measures both with `toy.largest_stable_lr` per depth and
returns a `DepthSweep`; `record(sweep)` is lr_depth.json (written by `isometry toy
--depth-sweep`) and `figure(record)` draws it (`plot.toy_depth_sweep`).

Example:
    >>> s = DepthSweepSettings(depths=(2, 3), max_steps=2000, grid_points=9, iterations=4,
    ...                        lr_range=(1e-8, 1e-1))
    >>> rec = record(depth_sweep(s))
    >>> rec["depths"], rec["residual"]["lr_max"][0] > rec["residual"]["lr_max"][1]
    ([2, 3], True)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from isometry import plot, toy
from isometry._io import jsonable
from isometry.experiments._report import markdown_table, paper_differences

__all__ = ["DepthSweepSettings", "DepthSweep", "depth_sweep", "scaling", "record", "figure",
           "markdown", "PAPER_DIFFERENCES"]

#: How the sweep differs from the paper, and the choices the paper leaves open (written by
#: `markdown`).
PAPER_DIFFERENCES = (
    "The paper derives the bound (λ ∝ L⁻¹(1 + w)^−(L−1) for α = 1 fixed, polynomial in L from "
    "α = 0) and does not measure it; this sweep measures the largest converging learning rate "
    "by bisection, so its depths (2–32), w₀ = 1, target 50·x_0 at every depth, budget of "
    "200,000 steps and loss tolerance 1e-8 are all our choice.",
    "\"Converges\" is our criterion: the loss falls to the tolerance within the budget at a "
    "point where the learning rate is below the local stability bound.")

#: What "converges" means in the sweep (written into the record).
CONVERGES = "loss <= tol within max_steps, at a point where lr is below the local stability bound"


@dataclasses.dataclass(frozen=True)
class DepthSweepSettings:
    """The learning-rate-versus-depth experiment.

    Both toys start at w = `w0` on the same task (target, inputs) at every depth: the vanilla
    residual toy with α fixed at 1, ReZero from α = 0 with α trained.

    Attributes:
      depths: the depths L.
      target, inputs: the task (Figure 2's by default; T is kept fixed across depths).
      w0: the initial weight (the paper's "w ≈ 1").
      max_steps, tol: the budget and loss tolerance that define "converges".
      lr_range, grid_points, iterations: the search (`toy.largest_stable_lr`).
    """

    depths: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 32)
    target: float = 50.0
    inputs: tuple[float, ...] = toy.FIGURE2_INPUTS
    w0: float = 1.0
    max_steps: int = 200_000
    tol: float = 1e-8
    lr_range: tuple[float, float] = (1e-12, 1.0)
    grid_points: int = 49
    iterations: int = 30

    def check(self) -> "DepthSweepSettings":
        """Raises ValueError naming the first bad setting; returns self."""
        if not self.depths:
            raise ValueError("depths must hold at least one depth")
        for d in self.depths:
            toy.toy_problem(d, self.target, self.inputs)
        toy.check_budget(self.max_steps, self.tol)
        lo, hi = self.lr_range
        if not 0 < lo < hi:
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high, got {(lo, hi)!r}")
        if self.grid_points < 2:
            raise ValueError(f"grid_points must be at least 2, got {self.grid_points!r}")
        return self


@dataclasses.dataclass(frozen=True)
class DepthSweep:
    """Per depth and toy: the largest converging learning rate and the fewest steps.

    Attributes:
      settings: the `DepthSweepSettings` used.
      depths: the depths, shape (n,).
      residual, rezero: one `toy.LearningRateSearch` per toy, fields of shape (n,).
      residual_bound: the exact stability bound at the solution for α = 1, shape (n,).
    """

    settings: DepthSweepSettings
    depths: np.ndarray
    residual: toy.LearningRateSearch
    rezero: toy.LearningRateSearch
    residual_bound: np.ndarray

    def scaling(self, name: str) -> dict:
        """`scaling(depths, lr)` of the toy `name` ("residual" or "rezero")."""
        return scaling(self.depths, getattr(self, name).lr)

    def to_dict(self) -> dict:
        """The lr_depth.json record (`record`)."""
        return record(self)


def scaling(depths, lr) -> dict:
    """Fits of the largest learning rate against depth, exponential and power law.

    log λ = a + b L (exponential: λ shrinks by e^{−b} per layer) and log λ = a + p log L
    (power law L^p), by least squares over the depths where a converging rate was found
    (finite `lr`); `better` names the fit with the smaller residual (None below 3 depths).
    """
    lr = np.asarray(lr, float)
    ok = np.isfinite(lr)
    depth, y = np.asarray(depths)[ok].astype(float), np.log(lr[ok])
    if ok.sum() < 3:
        return dict(depths_used=depth.astype(int).tolist(), better=None)
    fits = {}
    for kind, x in (("exponential", depth), ("power_law", np.log(depth))):
        coef, res, *_ = np.polyfit(x, y, 1, full=True)
        rms = float(np.sqrt(res[0] / ok.sum())) if res.size else 0.0
        fits[kind] = dict(slope=float(coef[0]), intercept=float(coef[1]), rms_log_residual=rms)
    fits["exponential"]["factor_per_layer"] = float(np.exp(fits["exponential"]["slope"]))
    better = min(("exponential", "power_law"), key=lambda k: fits[k]["rms_log_residual"])
    return dict(depths_used=depth.astype(int).tolist(), better=better, **fits)


def depth_sweep(settings: DepthSweepSettings | None = None, *, progress: bool = False) -> DepthSweep:
    """Largest converging learning rate and fewest steps versus depth, residual vs ReZero.

    `toy.largest_stable_lr` per depth and toy (compiled once per toy: the depth is traced),
    in float64.

    Args:
      settings: a `DepthSweepSettings` (default: depths 2–32 on Figure 2's task).
      progress: show a tqdm progress bar on stderr.

    Returns:
      A `DepthSweep`.
    """
    s = (settings or DepthSweepSettings()).check()
    search = functools.partial(toy.largest_stable_lr, lr_range=s.lr_range,
                               grid_points=s.grid_points, iterations=s.iterations,
                               max_steps=s.max_steps, tol=s.tol)
    runs = {"residual": [], "rezero": []}
    bounds = []
    with jax.enable_x64(True):
        for depth in tqdm(s.depths, desc="depth sweep", unit="depth", disable=not progress):
            problem = toy.toy_problem(depth, s.target, s.inputs)
            runs["residual"].append(search(problem, s.w0, 1.0, train_alpha=False))
            runs["rezero"].append(search(problem, s.w0, 0.0, train_alpha=True))
            bounds.append(float(toy.stability_bound(problem, 1.0)))
        stacked = {k: jax.device_get(jax.tree.map(lambda *v: jnp.stack(v), *r))
                   for k, r in runs.items()}
    return DepthSweep(s, np.asarray(s.depths), stacked["residual"], stacked["rezero"],
                      np.asarray(bounds))


def _toy_record(r: toy.LearningRateSearch) -> dict:
    return dict(lr_max=np.asarray(r.lr), lr_fails=np.asarray(r.lr_fails),
                fastest_lr=np.asarray(r.fastest_lr),
                fastest_steps=[int(v) if v >= 0 else None for v in np.asarray(r.fastest_steps)])


def record(sweep: DepthSweep) -> dict:
    """lr_depth.json, strict-JSON ready (`isometry._io.jsonable`: NaN/Inf as null, reason beside)."""
    s = sweep.settings
    setup = dict(target=s.target, inputs=list(s.inputs), w0=s.w0, max_steps=s.max_steps,
                 tol=s.tol, lr_range=list(s.lr_range), grid_points=s.grid_points,
                 iterations=s.iterations, converges=CONVERGES)
    return jsonable(dict(
        setup=setup, depths=np.asarray(sweep.depths).tolist(),
        residual=dict(alpha=1.0, train_alpha=False, **_toy_record(sweep.residual),
                      stability_bound=np.asarray(sweep.residual_bound),
                      scaling=sweep.scaling("residual")),
        rezero=dict(alpha0=0.0, train_alpha=True, **_toy_record(sweep.rezero),
                    scaling=sweep.scaling("rezero"))))


def figure(rec: dict):
    """`plot.toy_depth_sweep` on the record."""
    return plot.toy_depth_sweep(rec)


def markdown(rec: dict) -> str:
    """lr_depth.md: the fitted scaling of each toy and how the sweep differs from the paper."""
    rows = [[name, rec[name]["scaling"].get("better") or "—",
             rec[name]["scaling"].get("exponential", {}).get("factor_per_layer"),
             rec[name]["scaling"].get("power_law", {}).get("slope")]
            for name in ("residual", "rezero")]
    return "\n".join([
        "# Learning rate against depth on the toy x_L = (1 + αw)^L x_0\n",
        f"Depths {', '.join(str(d) for d in rec['depths'])}; w₀ = {rec['setup']['w0']:g}.\n",
        markdown_table(["toy", "better fit", "exponential: factor per layer",
                        "power law: exponent"], rows),
        paper_differences(PAPER_DIFFERENCES, rec.get("scale"))])
