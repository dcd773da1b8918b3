"""Statistics of measured singular values, in the terms of the predictions (docs/theory.md §0).

λ_i = σ_i² are the eigenvalues of JJᵀ, m_k = (1/N) Σ_i λ_i^k, nvar = m₂/m₁² − 1; one network
scatters, so comparisons average over nets with a standard error (docs/theory.md §2, "finite
width").

Example:
    >>> s = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> spectrum_moments(s)["m1"].round(4)
    array([1.6667, 1.    ])
    >>> mean_and_sem(np.array([1.0, 3.0]))
    (2.0, 1.0)
    >>> measured_summary(s, keys=("m1", "zero_fraction"))["mean"]["zero_fraction"]
    0.16666666666666666
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["MEASURED", "spectrum_moments", "mean_and_sem", "measured_summary"]

#: The statistics `measured_summary` reports by default.
MEASURED = ("m1", "m2", "m3", "nvar", "edge", "mean_sigma", "zero_fraction")


def spectrum_moments(singular_values: Any, k: int = 3) -> dict[str, np.ndarray]:
    """Per-spectrum statistics comparable to `SpectralPrediction.to_dict()`.

    Args:
      singular_values: (..., N) singular values of square Jacobians.

    Returns:
      dict of arrays of shape (...): m1..mk, nvar, edge (max λ), mean_sigma, zero_fraction
      (σ < 1e-10 σ_max: the numerically zero singular values).
    """
    s = np.asarray(singular_values, np.float64)
    lam = s ** 2
    out = {f"m{j}": np.mean(lam ** j, axis=-1) for j in range(1, max(k, 2) + 1)}
    out["nvar"] = out["m2"] / out["m1"] ** 2 - 1
    out["edge"] = lam.max(axis=-1)
    out["mean_sigma"] = s.mean(axis=-1)
    out["zero_fraction"] = np.mean(s < 1e-10 * s.max(axis=-1, keepdims=True), axis=-1)
    return {key: val for key, val in out.items() if not (key.startswith("m") and key[1:].isdigit()
                                                         and int(key[1:]) > k)}


def mean_and_sem(values: Any) -> tuple[float, float]:
    """(mean, standard error of the mean) over the first axis (n ≥ 2 samples)."""
    x = np.asarray(values, np.float64)
    if x.shape[0] < 2:
        raise ValueError("a standard error needs at least 2 samples")
    return float(x.mean(axis=0)), float(x.std(axis=0, ddof=1) / math.sqrt(x.shape[0]))


def measured_summary(singular_values: Any, keys: Sequence[str] = MEASURED, k: int = 3) -> dict:
    """{"mean": {key: mean}, "se": {key: standard error}} over nets (the first axis).

    Args:
      singular_values: (nets, N) singular values, one row per net (at least 2 nets).
      keys: statistics of `spectrum_moments` to report.
      k: the highest moment m_k computed.
    """
    stats = spectrum_moments(singular_values, k=k)
    mean, se = {}, {}
    for key in keys:
        mean[key], se[key] = mean_and_sem(stats[key])
    return dict(mean=mean, se=se)
