"""Measured spectra of plain and ReZero fully connected nets, to set beside `isometry.theory`.

`sample_singular_values` builds `samples` float64 nets `models.FullyConnected` (one seed each),
probes each at an input whose first pre-activations have variance q* (`probe_input`) and
returns the singular values of their input-output Jacobians; `theory.measured_summary` turns
them into means and standard errors over nets. float64 is scoped (`jax.enable_x64` around the
work): the process's global setting is left as it was.

Example:
    >>> sv = sample_singular_values(activation="linear", weights="orthogonal", depth=3, width=8,
    ...                             sigma_w2=1.21, sigma_b2=0.0, samples=2, q_star=1.0)
    >>> sv.shape, sv.dtype, bool(np.allclose(sv, 1.1 ** 3))     # σ = σ_w^L exactly
    ((2, 8), dtype('float64'), True)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from isometry._adapters import from_nnx
from isometry.spectrum._function import spectrum_fn

__all__ = ["probe_input", "sample_singular_values"]


def probe_input(key, width: int, q_star: float, sigma_w2: float, sigma_b2: float, dtype):
    """A Gaussian direction scaled so that the first pre-activations have variance q*:
    (1/N)||x⁰||² = (q* − σ_b²)/σ_w² (unit length where q* does not exist)."""
    x = jax.random.normal(key, (width,), dtype)
    if not math.isfinite(q_star):  # no fixed point (linear, ReLU): J does not depend on q
        q_star = sigma_w2 + sigma_b2
    target = max(q_star - sigma_b2, 0.0) / sigma_w2
    return x * jnp.sqrt(jnp.asarray(target * width, dtype)) / jnp.linalg.norm(x)


def sample_singular_values(*, activation: str, weights: str, depth: int, width: int,
                           sigma_w2: float, sigma_b2: float, samples: int, q_star: float,
                           seed: int = 0, variant: str = "plain",
                           alpha: float = 0.0) -> np.ndarray:
    """Singular values (samples, width) of `samples` float64 FC nets, one seed each.

    One compiled `spectrum_fn` serves every seed (same shapes, new parameter values).
    """
    sfn, out = None, []
    with jax.enable_x64(True):
        for i in range(samples):
            net = models.FullyConnected(depth, width, variant=variant, activation=activation,
                                        alpha_init=alpha, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                                        weights=weights, param_dtype=jnp.float64,
                                        rngs=nnx.Rngs(seed + i))
            apply_fn, params = from_nnx(net)
            if sfn is None:
                sfn = spectrum_fn(apply_fn, "dense")
            x = probe_input(jax.random.key(10_000 + seed + i), width, q_star, sigma_w2, sigma_b2,
                            jnp.float64)
            out.append(np.asarray(sfn(params, x).singular_values))
    return np.stack(out)
