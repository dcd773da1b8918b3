"""Theory to compare measured spectra against: mean field and free probability.

Conventions (docs/theory.md §0). A plain net of width N and depth L:

    h^l = W^l x^{l−1} + b^l,   x^l = φ(h^l),   l = 1..L,
    J = ∂x^L/∂x^0 = D^L W^L ⋯ D^1 W^1,   D^l = diag φ′(h^l),

with Gaussian weights W_ij ~ N(0, σ_w²/N) or orthogonal W = σ_w·O (O Haar), biases
b_i ~ N(0, σ_b²). λ_i = σ_i² are the eigenvalues of JJᵀ, m_k = (1/N) Σ_i λ_i^k,
nvar = m₂/m₁² − 1; E[σ] is the mean *unsquared* singular value. "log" is the natural log;
densities are given per unit of log10 σ, the axis of our histograms.

One module per concept:

| module | owns |
| --- | --- |
| `_activations` | `Activation` (φ, kinks, closed forms), the table `ACTIVATIONS` |
| `_quadrature` | Gaussian integrals split at kinks |
| `_mean_field` | q-map, q*, χ₁, c-map, depth scales, the critical line (§1) |
| `_d2` | the law of D², moments of JJᵀ by free multiplicative convolution (§2) |
| `_density` | the density of log10 σ from the S-transform (§2) |
| `_prediction` | `predict_spectrum`: mean field plus free probability |
| `_closed_forms` | Fuss–Catalan, Bernoulli moments, linear residual m₁ (§2, §3) |
| `_measured` | statistics of measured singular values |
| `_residual` | residual/ReZero nets at α > 0 (§3) |

Example:
    >>> from isometry import theory
    >>> round(theory.q_star("tanh", 1.5, 0.0), 6)
    0.286894
    >>> round(theory.critical_sigma_w2("tanh", 0.05), 6)
    1.760955
    >>> theory.predict_spectrum("relu", depth=16, sigma_w2=2.0, weights="orthogonal",
    ...                         nodes=400).nvar                # = L for orthogonal ReLU at χ₁ = 1
    16.0
"""

from isometry.theory._activations import (ACTIVATIONS, WEIGHTS, Activation, ClosedForms,
                                          resolve_activation)
from isometry.theory._closed_forms import (bernoulli_moments, fuss_catalan_density,
                                           fuss_catalan_edge, fuss_catalan_mean_sigma,
                                           fuss_catalan_moments, residual_linear_m1)
from isometry.theory._d2 import D2Law, d2_law, jacobian_moments
from isometry.theory._density import SpectralDensity, jacobian_density
from isometry.theory._mean_field import (MeanField, c_map, c_star, chi_1, critical_sigma_w2,
                                         depth_scales, mean_field, phi_prime_moments, q_map,
                                         q_star)
from isometry.theory._measured import MEASURED, mean_and_sem, measured_summary, spectrum_moments
from isometry.theory._prediction import SpectralPrediction, predict_spectrum
from isometry.theory._quadrature import gaussian_expectation
from isometry.theory._residual import (d_moments, density_points, factor_moments,
                                       free_product_moments, layer_variances, residual_density,
                                       residual_log_s, residual_m1, residual_moments,
                                       residual_nvar, scaling_limit_moments, scaling_time)

__all__ = [
    "ACTIVATIONS", "WEIGHTS", "Activation", "ClosedForms", "resolve_activation",
    "gaussian_expectation", "q_map", "q_star", "phi_prime_moments", "chi_1", "c_map",
    "c_star", "depth_scales", "critical_sigma_w2", "MeanField", "mean_field",
    "D2Law", "d2_law", "jacobian_moments", "SpectralDensity", "jacobian_density",
    "SpectralPrediction", "predict_spectrum",
    "fuss_catalan_moments", "fuss_catalan_density", "fuss_catalan_edge",
    "fuss_catalan_mean_sigma", "bernoulli_moments", "residual_linear_m1",
    "spectrum_moments", "mean_and_sem", "measured_summary", "MEASURED",
    "factor_moments", "free_product_moments", "residual_moments", "residual_nvar",
    "residual_m1", "scaling_limit_moments", "scaling_time", "layer_variances",
    "d_moments", "residual_log_s", "residual_density", "density_points",
]
