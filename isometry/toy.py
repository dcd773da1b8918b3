"""The one-neuron toy of the ReZero paper (§3.1, Figure 2): x_L = (1 + αw)^L x_0.

L single-neuron layers share one weight w and one residual weight α, so the network's output
and its input-output Jacobian are

    x_L = (1 + αw)^L x_0,        J = (1 + αw)^L.

Trained on the linear target T·x_0 over inputs x_1 … x_n with the loss (no ½)

    C(w, α) = (1/n) Σ_k ((1 + αw)^L x_k − T x_k)² = ⟨x²⟩ (u^L − T)²,   u = 1 + αw,

its gradient has the closed form

    ∂C/∂w = α G,   ∂C/∂α = w G,   G = 2⟨x²⟩ L u^{L−1} (u^L − T).

Zero loss lies on the hyperbola αw = T^{1/L} − 1 (1.1867… for Figure 2's T = 50, L = 5); at
α = 0 the gradient in w vanishes exactly, only α moves first (the ReZero start). With α fixed
at 1 (a vanilla residual toy) gradient descent on w is stable at the solution only for

    λ < 2 / C''(w*) = 1 / (⟨x²⟩ L² T^{2(L−1)/L}),

the `stability_bound`. For a target that grows with depth, T = (1 + w*)^L with w* fixed,
this is exponentially small in L (the paper's λ ∝ L^{−1}(1 + w)^{−(L−1)}); `depth_sweep`
measures the largest learning rate that converges, by bisection on simulated descent.

Everything here is a pure function of a `ToyProblem` (a pytree; even the depth is traced, so
one compilation serves every depth) and traced numbers, so it jit-compiles and vmaps; results
are frozen pytree dataclasses.

Example:
    >>> from isometry import toy
    >>> problem = toy.toy_problem()                       # Figure 2: L = 5, T = 50, 9 inputs
    >>> grid = toy.gradient_grid(problem, jnp.linspace(-2, 3, 400), jnp.linspace(-1, 2, 400))
    >>> path = toy.descend(problem, w0=1.0, alpha0=0.0, lr=1e-5)
    >>> path.converged, path.steps, path.final_alpha * path.final_w   # True, …, 1.1867…

Reference: Bachlechner et al. 2020, "ReZero is all you need", §3.1 and Figure 2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FIGURE2_INPUTS",
    "ToyProblem",
    "toy_problem",
    "output_gain",
    "loss",
    "gradient",
    "autodiff_gradient",
    "log_gradient_norm",
    "GradientGrid",
    "gradient_grid",
    "Trajectory",
    "descend",
    "stability_bound",
    "LearningRateSearch",
    "largest_stable_lr",
    "Figure2Settings",
    "Figure2",
    "figure2",
    "DepthSweepSettings",
    "DepthSweep",
    "depth_sweep",
]

Array = Any

#: The training inputs of Figure 2: x_0 ∈ {1.0, 1.1, …, 1.8}.
FIGURE2_INPUTS = tuple(round(1.0 + 0.1 * k, 10) for k in range(9))


# --- the problem --------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """The regression task x_L = (1 + αw)^L x_0 ≈ T x_0 over a fixed set of inputs.

    Build it with `toy_problem`, which checks the values. A pytree of three leaves; the depth
    is a traced integer (powers u^L use `lax.pow` with an integer exponent, exact for u < 0),
    so one compiled function serves every depth.

    Attributes:
      inputs: training inputs x_k, shape (n,).
      target: the target gain T (a scalar > 0).
      depth: L, the number of layers (an integer scalar).
    """

    inputs: Array
    target: Array
    depth: Array

    @property
    def second_moment(self) -> Array:
        """⟨x²⟩ = (1/n) Σ x_k², the only statistic of the inputs the loss depends on."""
        return jnp.mean(jnp.square(self.inputs))

    @property
    def solution_product(self) -> Array:
        """αw on the zero-loss curve: T^{1/L} − 1."""
        return self.target ** (1.0 / self.depth) - 1.0


def toy_problem(depth: int = 5, target: float = 50.0,
                inputs: Sequence[float] = FIGURE2_INPUTS) -> ToyProblem:
    """The toy task with depth L, target gain T and training inputs (defaults: Figure 2).

    Args:
      depth: L ≥ 1 layers.
      target: T > 0 (so that the zero-loss curve αw = T^{1/L} − 1 is real).
      inputs: the training inputs x_k, not all zero.

    Returns:
      A `ToyProblem` in the default float dtype (float64 when `jax_enable_x64` is on).

    Raises:
      ValueError: for a depth below 1, a non-positive or non-finite target, or inputs that are
        empty, non-finite or all zero.
    """
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    target = float(target)
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"target must be a finite number > 0, got {target!r}")
    x = np.asarray(inputs, dtype=float).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)) or not np.any(x):
        raise ValueError(f"inputs must be finite and not all zero, got {x.tolist()!r}")
    dtype = jnp.asarray(0.0).dtype
    return ToyProblem(jnp.asarray(x, dtype), jnp.asarray(target, dtype), jnp.asarray(int(depth)))


# --- loss and gradients -------------------------------------------------------------------------
def output_gain(problem: ToyProblem, w: Array, alpha: Array) -> Array:
    """The network's gain, which is also its input-output Jacobian: J = (1 + αw)^L."""
    return _power(1.0 + alpha * w, problem.depth)


def _power(u: Array, n) -> Array:
    """u^n for an integer n: unrolled multiplications when n is a Python int (fast, used by
    `gradient_grid`), `lax.pow` with an integer exponent when it is traced."""
    return u ** n if isinstance(n, int) else jax.lax.pow(u, n)


def loss(problem: ToyProblem, w: Array, alpha: Array) -> Array:
    """C(w, α) = (1/n) Σ_k ((1 + αw)^L x_k − T x_k)², summed over the inputs as written.

    `w` and `alpha` broadcast against each other (same rank); the result has their shape.
    """
    gain = output_gain(problem, w, alpha)
    x = problem.inputs.reshape((1,) * gain.ndim + problem.inputs.shape)
    residual = gain[..., None] * x - problem.target * x
    return jnp.mean(jnp.square(residual), axis=-1)


def gradient(problem: ToyProblem, w: Array, alpha: Array) -> tuple[Array, Array]:
    """The closed-form gradient (∂C/∂w, ∂C/∂α) = (α G, w G), G = 2⟨x²⟩ L u^{L−1} (u^L − T).

    Elementwise in `w` and `alpha` (same rank, broadcast).
    """
    u = 1.0 + alpha * w
    big_l = problem.depth
    g = (2.0 * problem.second_moment * big_l * _power(u, big_l - 1)
         * (_power(u, big_l) - problem.target))
    return alpha * g, w * g


def autodiff_gradient(problem: ToyProblem, w: Array, alpha: Array) -> tuple[Array, Array]:
    """(∂C/∂w, ∂C/∂α) by `jax.grad` of `loss`, elementwise over broadcast `w`, `alpha`."""
    grad = jax.grad(lambda w_, a_: loss(problem, w_, a_), argnums=(0, 1))
    return jnp.vectorize(grad)(jnp.asarray(w), jnp.asarray(alpha))


def log_gradient_norm(problem: ToyProblem, w: Array, alpha: Array) -> Array:
    """log ‖∂C‖² = log((∂C/∂w)² + (∂C/∂α)²), natural log, the quantity Figure 2 contours.

    It is −inf where the gradient vanishes: on the zero-loss curve, at the saddle w = α = 0,
    and where 1 + αw = 0 for L ≥ 2.
    """
    gw, ga = gradient(problem, w, alpha)
    return jnp.log(jnp.square(gw) + jnp.square(ga))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GradientGrid:
    """log ‖∂C‖² on a (w, α) grid.

    Attributes:
      w: grid values of w, shape (n_w,).
      alpha: grid values of α, shape (n_alpha,).
      log_grad_norm: log ‖∂C‖² with rows over α and columns over w, shape (n_alpha, n_w)
        (ready for `contour(w, alpha, log_grad_norm)`).
    """

    w: Array
    alpha: Array
    log_grad_norm: Array


def gradient_grid(problem: ToyProblem, w: Array, alpha: Array) -> GradientGrid:
    """log ‖∂C‖² over the outer grid of `w` (n_w,) and `alpha` (n_alpha,).

    One fused, jitted elementwise kernel of the closed-form gradient, compiled per depth (the
    depth is read as a Python int, so call it outside `jit`); a 400 × 400 grid takes ~2 ms on
    CPU (benchmarks/toy_grid.py).
    """
    return _gradient_grid(problem.inputs, problem.target, jnp.asarray(w), jnp.asarray(alpha),
                          depth=int(problem.depth))


@functools.partial(jax.jit, static_argnames="depth")
def _gradient_grid(inputs, target, w, alpha, *, depth: int) -> GradientGrid:
    problem = ToyProblem(inputs, target, depth)
    return GradientGrid(w, alpha, log_gradient_norm(problem, w[None, :], alpha[:, None]))


# --- gradient descent ---------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A gradient-descent run on the toy, with how it stopped.

    Stopping rules, checked after every step: converged when C ≤ `tol`; diverged when C is
    not finite or exceeds `blowup` × max(C at the start, ⟨x²⟩T²) (⟨x²⟩T² is the loss of the
    zero network); otherwise it stops after `max_steps`. A diverged run is reported by
    `diverged`, its last recorded point is where it was caught.

    With `record=True` the paths hold the start and every step, padded with the final point
    up to max_steps + 1 entries; with `record=False` they hold only the start and the end.
    Leading batch axes (from `jax.vmap`) are kept on every field.

    Attributes:
      w, alpha, loss: the path, shape (..., n_points).
      steps: number of gradient steps taken, shape (...).
      converged: C ≤ tol reached, shape (...).
      diverged: divergence detected, shape (...).
    """

    w: Array
    alpha: Array
    loss: Array
    steps: Array
    converged: Array
    diverged: Array

    @property
    def final_w(self) -> Array:
        return self.w[..., -1]

    @property
    def final_alpha(self) -> Array:
        return self.alpha[..., -1]

    @property
    def final_loss(self) -> Array:
        return self.loss[..., -1]

    @property
    def final_product(self) -> Array:
        """α·w at the end (T^{1/L} − 1 when converged)."""
        return self.final_alpha * self.final_w


@functools.partial(jax.jit, static_argnames=("train_alpha", "max_steps", "record"))
def descend(problem: ToyProblem, w0: Array, alpha0: Array, lr: Array, *, train_alpha: bool = True,
            max_steps: int = 100_000, tol: Array = 1e-8, blowup: Array = 1e6,
            record: bool = True) -> Trajectory:
    """Plain gradient descent w ← w − λ ∂C/∂w, α ← α − λ ∂C/∂α, until a stopping rule fires.

    A `jax.lax.while_loop`, so a run stops as soon as it converges or diverges; vmap it over
    starts or learning rates (the batch runs until its slowest member stops).

    Args:
      problem: the toy task.
      w0, alpha0: the start (scalars). ReZero: alpha0 = 0; vanilla residual: alpha0 = 1 with
        `train_alpha=False`.
      lr: the learning rate λ.
      train_alpha: update α too (ReZero) or keep it fixed at alpha0 (static).
      max_steps: the most steps to take (static).
      tol: converged when C ≤ tol.
      blowup: diverged when C > blowup × max(C(w0, α0), ⟨x²⟩T²), or C is not finite.
      record: keep every point of the path (static; memory ∝ max_steps) or only the ends.
        Under `jax.vmap` a recording loop copies its buffer every step; loop over starts.

    Returns:
      A `Trajectory`.
    """
    dtype = problem.target.dtype
    w0, alpha0, lr = (jnp.asarray(v, dtype) for v in (w0, alpha0, lr))
    c0 = loss(problem, w0, alpha0)
    limit = blowup * jnp.maximum(c0, problem.second_moment * problem.target ** 2)
    n_points = max_steps + 1 if record else 2
    path0 = jnp.zeros((3, n_points), dtype).at[:, 0].set(jnp.stack([w0, alpha0, c0]))

    def not_done(state):
        step, _, _, c, path = state
        return (step < max_steps) & (c > tol) & jnp.isfinite(c) & (c <= limit)

    def one_step(state):
        step, w, alpha, _, path = state
        gw, ga = gradient(problem, w, alpha)
        w = w - lr * gw
        alpha = alpha - lr * ga if train_alpha else alpha
        c = loss(problem, w, alpha)
        if record:
            path = path.at[:, step + 1].set(jnp.stack([w, alpha, c]))
        return step + 1, w, alpha, c, path

    state = (jnp.asarray(0), w0, alpha0, c0, path0)
    steps, w, alpha, c, path = jax.lax.while_loop(not_done, one_step, state)
    final = jnp.stack([w, alpha, c])[:, None]
    path = jnp.where(jnp.arange(n_points)[None, :] >= (steps if record else 1), final, path)
    return Trajectory(path[0], path[1], path[2], steps, c <= tol,
                      ~jnp.isfinite(c) | (c > limit))


def stability_bound(problem: ToyProblem, alpha: Array = 1.0, *, w: Array | None = None,
                    train_alpha: bool = False) -> Array:
    """The largest learning rate at which gradient descent is linearly stable at a solution.

    At a zero-loss point (u = 1 + αw = T^{1/L}) the Hessian of C is the rank-one
    2⟨x²⟩ L² u^{2(L−1)} v vᵀ with v = (α, w) (the term with u^L − T vanishes). With α fixed
    only w moves and the curvature is h = 2⟨x²⟩ L² α² T^{2(L−1)/L}; with both trained the
    curvature across the curve of minima is 2⟨x²⟩ L² u^{2(L−1)} (α² + w²) (along it, 0).
    Descent converges for λ < 2/h and is pushed away for λ > 2/h.

    Args:
      problem: the toy task.
      alpha: the residual weight at the solution (1 for the vanilla residual toy).
      w: the weight at the solution; default (T^{1/L} − 1)/α, the point of the curve at α.
        Given, it should lie on the curve (u is computed from it).
      train_alpha: both parameters trained (ReZero) instead of w alone.

    Returns:
      2/h, e.g. 1 / (⟨x²⟩ L² T^{2(L−1)/L}) for the residual toy (α = 1).
    """
    alpha = jnp.asarray(alpha, problem.target.dtype)
    w = problem.solution_product / alpha if w is None else jnp.asarray(w, alpha.dtype)
    big_l = problem.depth
    slope = big_l * _power(1.0 + alpha * w, big_l - 1)  # ∂u^L/∂u
    h = 2.0 * problem.second_moment * slope ** 2 * (alpha ** 2 + (w ** 2 if train_alpha else 0.0))
    return 2.0 / h


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LearningRateSearch:
    """Where gradient descent stops converging, and how fast it converges at its best.

    Attributes:
      lr: the largest learning rate found to converge within the step budget (the lower end
        of the final bisection bracket); NaN when no learning rate of the grid converges.
      lr_fails: the upper end of the bracket, found not to converge; +inf when the top of the
        search range converges.
      fastest_lr: the grid learning rate that converges in the fewest steps (NaN if none).
      fastest_steps: those fewest steps (−1 if none converges).
    """

    lr: Array
    lr_fails: Array
    fastest_lr: Array
    fastest_steps: Array


@functools.partial(jax.jit, static_argnames=("train_alpha", "max_steps", "grid_points",
                                             "iterations"))
def largest_stable_lr(problem: ToyProblem, w0: Array, alpha0: Array, *, train_alpha: bool,
                      lr_range: tuple[float, float] = (1e-12, 1.0), grid_points: int = 49,
                      iterations: int = 30, max_steps: int = 100_000, tol: Array = 1e-8,
                      blowup: Array = 1e6) -> LearningRateSearch:
    """The largest learning rate at which descent from (w0, α0) converges within `max_steps`.

    "Converges" means: the loss falls to `tol` within the budget, at a point where descent is
    linearly stable (λ below `stability_bound` there) — a step that happens to land on the
    solution at a learning rate too large to hold it does not count. First every learning rate of a log-spaced grid over `lr_range` is simulated (vmapped);
    then the bracket between the largest grid value that converges and the grid value above it
    is bisected in log λ. Slow convergence counts as failure: at small λ the step budget, not
    stability, is what limits, so the search range must reach down to where descent is fast
    enough (`lr` is NaN otherwise).

    Args:
      problem, w0, alpha0, train_alpha, max_steps, tol, blowup: as in `descend`.
      lr_range: (low, high) learning rates to search.
      grid_points: size of the log-spaced grid (static).
      iterations: bisection steps; the final bracket is (high/low)^(1/(grid_points−1)) / 2^iterations
        wide in log λ (static).

    Returns:
      A `LearningRateSearch`.
    """
    dtype = problem.target.dtype

    def outcome(log_lr):
        lr = jnp.exp(log_lr)
        t = descend(problem, w0, alpha0, lr, train_alpha=train_alpha, max_steps=max_steps,
                    tol=tol, blowup=blowup, record=False)
        holds = lr < stability_bound(problem, t.final_alpha, w=t.final_w, train_alpha=train_alpha)
        return t.converged & holds, t.steps

    grid = jnp.linspace(*(jnp.log(jnp.asarray(v, dtype)) for v in lr_range), grid_points)
    ok, grid_steps = jax.vmap(outcome)(grid)
    fastest = jnp.argmin(jnp.where(ok, grid_steps, max_steps + 1))
    top = jnp.max(jnp.where(ok, jnp.arange(grid_points), -1))
    lo = grid[jnp.maximum(top, 0)]
    hi = grid[jnp.minimum(top + 1, grid_points - 1)]

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        mid_ok, _ = outcome(mid)
        return jnp.where(mid_ok, mid, lo), jnp.where(mid_ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, bisect, (lo, hi))
    found = top >= 0
    return LearningRateSearch(jnp.where(found, jnp.exp(lo), jnp.nan),
                              jnp.where(top == grid_points - 1, jnp.inf, jnp.exp(hi)),
                              jnp.where(found, jnp.exp(grid[fastest]), jnp.nan),
                              jnp.where(found, grid_steps[fastest], -1))


# --- Figure 2 -----------------------------------------------------------------------------------
def _check_budget(max_steps: int, tol: float) -> None:
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")


@dataclasses.dataclass(frozen=True)
class Figure2Settings:
    """Everything that defines Figure 2 (defaults: the paper's setup, §3.1).

    Attributes:
      depth, target, inputs: the task (`toy_problem`).
      w_starts: initial w of the ReZero trajectories, which all start at α = 0.
      lr: gradient-descent learning rate λ (the α = 1 bound at L = 5 is 3.8e-5).
      max_steps, tol: descent budget and loss tolerance (`descend`).
      w_range, alpha_range: extent of the contour grid.
      grid_size: grid points along each axis.
      residual: also run the vanilla residual toy (α fixed at 1) from the same w starts.
    """

    depth: int = 5
    target: float = 50.0
    inputs: tuple[float, ...] = FIGURE2_INPUTS
    w_starts: tuple[float, ...] = (-1.5, -0.75, 0.5, 1.0, 1.75)
    lr: float = 5e-6
    max_steps: int = 20_000
    tol: float = 1e-8
    w_range: tuple[float, float] = (-2.5, 2.5)
    alpha_range: tuple[float, float] = (-1.5, 1.5)
    grid_size: int = 400
    residual: bool = True

    def problem(self) -> ToyProblem:
        return toy_problem(self.depth, self.target, self.inputs)

    def check(self) -> "Figure2Settings":
        """Raises ValueError naming the first bad setting; returns self."""
        self.problem()
        if not self.w_starts:
            raise ValueError("w_starts must hold at least one initial w")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        _check_budget(self.max_steps, self.tol)
        for name in ("w_range", "alpha_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)!r}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be at least 2, got {self.grid_size!r}")
        return self


@dataclasses.dataclass(frozen=True)
class Figure2:
    """The data of Figure 2: the gradient contour grid and the descent trajectories.

    Attributes:
      settings: the `Figure2Settings` used.
      problem: the `ToyProblem`.
      grid: log ‖∂C‖² over (w, α) (`GradientGrid`).
      rezero: one `Trajectory` per w start (leading axis), from α = 0, α trained.
      residual: the same starts with α fixed at 1 (None unless `settings.residual`).
      second_moment: ⟨x²⟩ of the inputs.
      solution_product: αw on the zero-loss curve, T^{1/L} − 1.
      residual_bound: `stability_bound` for α = 1.
    """

    settings: Figure2Settings
    problem: ToyProblem
    grid: GradientGrid
    rezero: Trajectory
    residual: Trajectory | None
    second_moment: float
    solution_product: float
    residual_bound: float

    def to_json(self) -> dict:
        """The setup and, per trajectory, its start, end, α·w, steps and how it stopped."""
        s = self.settings
        out = dict(setup=dict(depth=s.depth, target=s.target, inputs=list(s.inputs),
                              second_moment=self.second_moment,
                              loss="C = (1/n) sum_k ((1 + alpha w)^L x_k - T x_k)^2",
                              lr=s.lr, max_steps=s.max_steps, tol=s.tol,
                              w_range=list(s.w_range), alpha_range=list(s.alpha_range),
                              grid_size=s.grid_size),
                   solution_product=self.solution_product,
                   residual_stability_bound=self.residual_bound,
                   rezero=_trajectory_records(self.rezero))
        if self.residual is not None:
            out["residual"] = _trajectory_records(self.residual)
        return out


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _trajectory_records(t: Trajectory) -> list[dict]:
    t = jax.device_get(t)
    return [dict(w0=float(t.w[i, 0]), alpha0=float(t.alpha[i, 0]),
                 final_w=_finite_or_none(t.final_w[i]),
                 final_alpha=_finite_or_none(t.final_alpha[i]),
                 final_product=_finite_or_none(t.final_product[i]),
                 final_loss=_finite_or_none(t.final_loss[i]), steps=int(t.steps[i]),
                 converged=bool(t.converged[i]), diverged=bool(t.diverged[i]))
            for i in range(t.steps.shape[0])]


def figure2(settings: Figure2Settings | None = None) -> Figure2:
    """Computes Figure 2: the contour grid and the trajectories (`plot.toy_figure2` draws it).

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
        grid = gradient_grid(problem, w, alpha)
        starts = jnp.asarray(s.w_starts, problem.target.dtype)

        def run(alpha0, train_alpha):  # one call per start: a vmapped recording loop is slow
            paths = [descend(problem, w0, alpha0, s.lr, train_alpha=train_alpha,
                             max_steps=s.max_steps, tol=s.tol) for w0 in starts]
            return jax.tree.map(lambda *v: jnp.stack(v), *paths)

        rezero = run(0.0, True)
        residual = run(1.0, False) if s.residual else None
        return Figure2(s, problem, grid, *jax.device_get((rezero, residual)),
                       float(problem.second_moment), float(problem.solution_product),
                       float(stability_bound(problem, 1.0)))


# --- learning rate versus depth -----------------------------------------------------------------
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
      lr_range, grid_points, iterations: the search (`largest_stable_lr`).
    """

    depths: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 32)
    target: float = 50.0
    inputs: tuple[float, ...] = FIGURE2_INPUTS
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
            toy_problem(d, self.target, self.inputs)
        _check_budget(self.max_steps, self.tol)
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
      residual, rezero: one `LearningRateSearch` per toy, fields of shape (n,).
      residual_bound: the exact stability bound at the solution for α = 1, shape (n,).
    """

    settings: DepthSweepSettings
    depths: np.ndarray
    residual: LearningRateSearch
    rezero: LearningRateSearch
    residual_bound: np.ndarray

    def scaling(self, name: str) -> dict:
        """Fits of the largest learning rate against depth, exponential and power law.

        log λ = a + b L (exponential: λ shrinks by e^{−b} per layer) and
        log λ = a + p log L (power law L^p), by least squares over the depths where a
        converging rate was found; `better` names the fit with the smaller residual.
        """
        lr = np.asarray(getattr(self, name).lr, float)
        ok = np.isfinite(lr)
        depth, y = self.depths[ok].astype(float), np.log(lr[ok])
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

    def to_json(self) -> dict:
        s = self.settings

        def toy_record(r: LearningRateSearch) -> dict:
            return dict(lr_max=[_finite_or_none(v) for v in r.lr],
                        lr_fails=[_finite_or_none(v) for v in r.lr_fails],
                        fastest_lr=[_finite_or_none(v) for v in r.fastest_lr],
                        fastest_steps=[int(v) if v >= 0 else None for v in r.fastest_steps])

        return dict(setup=dict(target=s.target, inputs=list(s.inputs), w0=s.w0,
                               max_steps=s.max_steps, tol=s.tol, lr_range=list(s.lr_range),
                               grid_points=s.grid_points, iterations=s.iterations,
                               converges=("loss <= tol within max_steps, at a point where lr is below "
                                          "the local stability bound")),
                    depths=self.depths.tolist(),
                    residual=dict(alpha=1.0, train_alpha=False, **toy_record(self.residual),
                                  stability_bound=self.residual_bound.tolist(),
                                  scaling=self.scaling("residual")),
                    rezero=dict(alpha0=0.0, train_alpha=True, **toy_record(self.rezero),
                                scaling=self.scaling("rezero")))


def depth_sweep(settings: DepthSweepSettings | None = None, *, progress: bool = False) -> DepthSweep:
    """Largest converging learning rate and fewest steps versus depth, residual vs ReZero.

    `largest_stable_lr` per depth and toy (compiled once per toy: the depth is traced), in
    float64.

    Args:
      settings: a `DepthSweepSettings` (default: depths 2–32 on Figure 2's task).
      progress: show a tqdm progress bar on stderr.

    Returns:
      A `DepthSweep`.
    """
    from tqdm import tqdm

    s = (settings or DepthSweepSettings()).check()
    search = functools.partial(largest_stable_lr, lr_range=s.lr_range, grid_points=s.grid_points,
                               iterations=s.iterations, max_steps=s.max_steps, tol=s.tol)
    runs = {"residual": [], "rezero": []}
    bounds = []
    with jax.enable_x64(True):
        for depth in tqdm(s.depths, desc="depth sweep", unit="depth", disable=not progress):
            problem = toy_problem(depth, s.target, s.inputs)
            runs["residual"].append(search(problem, s.w0, 1.0, train_alpha=False))
            runs["rezero"].append(search(problem, s.w0, 0.0, train_alpha=True))
            bounds.append(float(stability_bound(problem, 1.0)))
        stacked = {k: jax.device_get(jax.tree.map(lambda *v: jnp.stack(v), *r))
                   for k, r in runs.items()}
    return DepthSweep(s, np.asarray(s.depths), stacked["residual"], stacked["rezero"],
                      np.asarray(bounds))
