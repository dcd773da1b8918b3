"""Jacobian spectra of residual and ReZero nets at α > 0: `isometry.theory_residual`.

The math lives in `isometry.theory._residual` (free probability, docs/theory.md §3); this
module keeps its public names importable as `isometry.theory_residual` (`iso.theory_residual`).

Example:
    >>> from isometry import theory_residual as tr
    >>> tr.residual_moments("linear", 8, 0.3, 1.0, k=1).round(6)     # (1 + 0.09)^8
    array([1.992563])
"""

from isometry.theory._residual import (d_moments, density_points, factor_moments, free_product_moments,
                                       layer_variances, residual_density, residual_log_s,
                                       residual_m1, residual_moments, residual_nvar,
                                       scaling_limit_moments, scaling_time)

__all__ = ["factor_moments", "free_product_moments", "residual_moments", "residual_nvar",
           "residual_m1", "scaling_limit_moments", "scaling_time", "layer_variances",
           "d_moments", "residual_log_s", "residual_density", "density_points"]
