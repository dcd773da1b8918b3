"""Fair baselines: every variant at its own best learning rate, found on the same budget.

A speed-up measured at one shared learning rate can be an artefact of that rate suiting one
variant better than another. `--lr-sweep` trains each variant at every rate of a small grid
(the shared rate times `factors`), with the same steps, data and seed for all, and picks the
rate with the lowest final training loss (the mean over the last `tail` logged losses; a run
whose loss is not finite counts as the worst). The experiment then reports its speed-up
twice: at the paper's shared settings and with each variant at its best rate.

Examples:
    >>> losses = {0.01: 0.9, 0.03: 0.5, 0.1: float("nan")}
    >>> sweep = sweep_lr(lambda lr: losses[lr], 0.01, (1.0, 3.0, 10.0))
    >>> sweep.best_lr, sweep.diverged
    (0.03, (0.1,))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["DEFAULT_FACTORS", "LrSweep", "sweep_lr", "final_loss", "lr_grid"]

#: The grid around the shared learning rate: a factor of ~3 between points, 10× either way.
DEFAULT_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclasses.dataclass(frozen=True)
class LrSweep:
    """One variant's sweep: the rates tried, their final training losses, the best rate."""

    grid: tuple[float, ...]
    final_loss: tuple[float, ...]
    best_lr: float

    @property
    def diverged(self) -> tuple[float, ...]:
        """The rates whose final loss was not finite."""
        return tuple(lr for lr, x in zip(self.grid, self.final_loss) if not math.isfinite(x))

    def record(self) -> dict:
        """The JSON record (non-finite losses become null with a reason, via `isometry._io`)."""
        return {"grid": list(self.grid), "final_loss": list(self.final_loss),
                "best_lr": self.best_lr, "diverged": list(self.diverged)}


def lr_grid(lr: float, factors: Sequence[float]) -> tuple[float, ...]:
    """The rates `lr * f` for `f` in `factors`, rounded to 12 significant digits."""
    return tuple(float(f"{lr * f:.12g}") for f in factors)


def final_loss(losses: Sequence[float], tail: int = 3) -> float:
    """Mean of the last `tail` losses; inf when any of them is not finite (a diverged run)."""
    last = np.asarray(losses[-tail:], dtype=np.float64)
    if last.size == 0 or not np.all(np.isfinite(last)):
        return math.inf
    return float(last.mean())


def sweep_lr(train: Callable[[float], float], lr: float, factors: Sequence[float]) -> LrSweep:
    """Calls `train(rate)` (→ final training loss) for each rate of the grid; the best rate wins.

    Ties go to the rate nearest the shared `lr` (then the smaller one), so a flat loss surface
    keeps the paper's setting.
    """
    grid = lr_grid(lr, factors)
    losses = tuple(float(train(rate)) for rate in grid)
    finite = [(x, abs(math.log(rate / lr)), rate) for rate, x in zip(grid, losses)
              if math.isfinite(x)]
    best = min(finite)[2] if finite else lr
    return LrSweep(grid=grid, final_loss=losses, best_lr=best)
