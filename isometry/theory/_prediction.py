"""Mean field plus free probability: the predicted Jacobian spectrum of a plain net.

Example:
    >>> p = predict_spectrum("linear", 4, 1.0, nodes=400)   # Fuss–Catalan, L = 4
    >>> p.moments.round(6).tolist(), round(p.nvar, 9), round(p.edge, 6), round(5**5 / 4**4, 6)
    ([1.0, 5.0, 35.0], 4.0, 12.207031, 12.207031)
    >>> predict_spectrum("relu", 16, 2.0, weights="orthogonal", nodes=400).nvar   # = L at χ₁ = 1
    16.0
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import numpy as np

from isometry.theory._activations import resolve_activation
from isometry.theory._d2 import d2_law, jacobian_moments
from isometry.theory._density import SpectralDensity, jacobian_density
from isometry.theory._mean_field import q_star

__all__ = ["SpectralPrediction", "predict_spectrum"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectralPrediction:
    """Predicted Jacobian spectrum of a plain net (N → ∞) at its mean-field fixed point.

    Attributes:
      depth, weights: L and "gaussian"/"orthogonal" (static).
      sigma_w2, sigma_b2: the initialization.
      q_star, chi_1: mean field (`q_star`, `chi_1`); q_star is nan for linear and ReLU nets
        whose q grows without bound (their Jacobian does not depend on q).
      moments: m_1..m_k of JJᵀ (m₁ = χ₁^L).
      nvar: m₂/m₁² − 1.
      density: the `SpectralDensity` (edge, E[σ], density of log10 σ, atoms).
    """

    sigma_w2: float
    sigma_b2: float
    q_star: float
    chi_1: float
    moments: np.ndarray
    nvar: float
    density: SpectralDensity
    depth: int = dataclasses.field(metadata=dict(static=True))
    weights: str = dataclasses.field(metadata=dict(static=True))

    @property
    def edge(self) -> float:
        """Top of the support of λ = σ²."""
        return self.density.edge

    @property
    def mean_sigma(self) -> float:
        """E[σ]."""
        return self.density.mean_sigma

    def summary(self) -> dict[str, float]:
        """Deprecated: `to_dict()`."""
        warnings.warn("summary() is deprecated: use to_dict()", DeprecationWarning, stacklevel=2)
        return self.to_dict()

    def to_dict(self) -> dict[str, float]:
        """q*, χ₁, m1.., nvar, edge, E[σ] and the mass at σ = 0 as plain floats (for JSON)."""
        out = dict(q_star=self.q_star, chi_1=self.chi_1)
        out.update({f"m{j + 1}": float(m) for j, m in enumerate(self.moments)})
        out.update(nvar=self.nvar, edge=self.edge, mean_sigma=self.mean_sigma,
                   zero_mass=self.density.zero_mass)
        return out


def predict_spectrum(activation, depth: int, sigma_w2: float, sigma_b2: float = 0.0,
                     weights: str = "gaussian", *, kinks=None, q0: float = 1.0, k: int = 3,
                     decades: float = 24.0, nodes: int = 4000) -> SpectralPrediction:
    """Mean field plus free probability: the Jacobian spectrum of a plain net of depth L.

    For homogeneous φ (linear, ReLU: `ClosedForms.homogeneous`) whose q grows without bound the
    law of φ′ does not depend on q: q_star is nan and the prediction stands.
    """
    act = resolve_activation(activation, kinks)
    try:
        q = q_star(act, sigma_w2, sigma_b2, q0=q0)
    except ValueError:
        if act.closed_forms is None or not act.closed_forms.homogeneous:
            raise
        q = math.nan
    law = d2_law(act, q)
    law = d2_law(act, q)
    moments = jacobian_moments(law, depth, sigma_w2, weights, k=max(k, 2))
    dens = jacobian_density(law, depth, sigma_w2, weights, decades=decades, nodes=nodes)
    nvar = float(moments[1] / moments[0] ** 2 - 1) if moments[0] > 0 else math.nan
    return SpectralPrediction(float(sigma_w2), float(sigma_b2), float(q),
                              float(sigma_w2 * law.moments(1)[0]), moments[:k], nvar, dens,
                              int(depth), weights)

