"""The configuration of `isometry theory` and its measured nets (plain and --variant rezero)."""

from __future__ import annotations

import dataclasses
import math

from isometry.cli import UsageError

__all__ = ["TheoryConfig", "sample"]


@dataclasses.dataclass(frozen=True)
class TheoryConfig:
    """What `isometry theory` computes, from the parsed arguments (checked on construction).

    Attributes mirror the options: sigma_w2 None means the critical σ_w² (plain) or the
    activation's default (rezero); alphas are the --alpha values of --variant rezero.
    """

    activation: str
    weights: str
    depths: tuple[int, ...]
    sigma_w2: float | None
    sigma_b2: float
    width: int
    samples: int
    seed: int
    bins: int
    out: str
    json: bool
    variant: str
    alphas: tuple[float, ...]

    @classmethod
    def from_args(cls, args) -> "TheoryConfig":
        config = cls(args.activation, args.weights, tuple(args.depth), args.sigma_w2,
                     args.sigma_b2, args.width, args.samples, args.seed, args.bins, args.out,
                     args.json, args.variant, tuple(args.alpha or ()))
        config.check()
        return config

    def check(self) -> None:
        """Raises `UsageError` naming the first bad option."""
        if not self.depths or any(d < 1 for d in self.depths):
            raise UsageError(f"--depth needs positive depths, got {list(self.depths)}")
        if self.width < 1:
            raise UsageError(f"--width must be positive, got {self.width}")
        if self.samples < 0 or self.samples == 1:
            raise UsageError(f"--samples must be 0 (predictions only) or at least 2 (for a "
                             f"standard error), got {self.samples}")
        if self.sigma_w2 is not None and not (math.isfinite(self.sigma_w2) and self.sigma_w2 > 0):
            raise UsageError(f"--sigma-w2 must be positive, got {self.sigma_w2}")
        if not (math.isfinite(self.sigma_b2) and self.sigma_b2 >= 0):
            raise UsageError(f"--sigma-b2 must be non-negative, got {self.sigma_b2}")
        if self.bins < 1:
            raise UsageError(f"--bins must be positive, got {self.bins}")
        if self.variant != "rezero" and self.alphas:
            raise UsageError(f"--alpha sets the residual weights of --variant rezero; "
                             f"--variant {self.variant} nets have no alpha (add --variant rezero)")
        if self.variant == "rezero" and (
                not self.alphas or any(not (math.isfinite(a) and a > 0) for a in self.alphas)):
            raise UsageError(f"--alpha needs positive values for --variant rezero, e.g. "
                             f"--alpha 0.1,0.3; got {list(self.alphas) or None}")


def sample(config: TheoryConfig, depth: int, sigma_w2: float, q_star: float, **net):
    """Singular values of the `config.samples` measured nets of depth `depth`."""
    from isometry.experiments._sampling import sample_singular_values  # jax: after the checks

    return sample_singular_values(activation=config.activation, weights=config.weights,
                                  depth=depth, width=config.width, sigma_w2=sigma_w2,
                                  sigma_b2=config.sigma_b2, samples=config.samples,
                                  q_star=q_star, seed=config.seed, **net)
