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

The Figure 2 and depth-sweep experiments built on this model are in
`isometry.experiments.fig2` and `isometry.experiments.toy_depth`.

Example:
    >>> import jax.numpy as jnp
    >>> from isometry import toy
    >>> problem = toy.toy_problem()                       # Figure 2: L = 5, T = 50, 9 inputs
    >>> grid = toy.gradient_grid(problem, jnp.linspace(-2, 3, 40), jnp.linspace(-1, 2, 30))
    >>> grid.log_grad_norm.shape
    (30, 40)
    >>> path = toy.descend(problem, w0=1.0, alpha0=0.0, lr=5e-6, max_steps=2000, record=False)
    >>> bool(path.converged), round(float(path.final_product), 4)
    (True, 1.1867)

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
    "compiled_gradient_grid",
    "Trajectory",
    "descend",
    "stability_bound",
    "LearningRateSearch",
    "largest_stable_lr",
    "check_budget",
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
    return compiled_gradient_grid(problem.inputs, problem.target, jnp.asarray(w),
                                  jnp.asarray(alpha), depth=int(problem.depth))


@functools.partial(jax.jit, static_argnames="depth")
def compiled_gradient_grid(inputs, target, w, alpha, *, depth: int) -> GradientGrid:
    """The jitted kernel of `gradient_grid` on the problem's leaves (one compilation per depth)."""
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


def check_budget(max_steps: int, tol: float) -> None:
    """Raises ValueError unless `max_steps` ≥ 1 and `tol` > 0 (the budget of `descend`)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
