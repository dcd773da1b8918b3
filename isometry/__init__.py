"""isometry: singular-value spectra of input-output Jacobians, for dynamical-isometry analysis.

    import isometry as iso
    spec = iso.jacobian_spectrum(fn, x)              # dense, jit-compiled
    sfn = iso.spectrum_fn(apply_fn, method="auto")   # pure (params, x[, key]) -> Spectrum
    apply_fn, params = iso.from_nnx(module)
"""

from isometry._adapters import from_linen, from_nnx
from isometry._jacobian import (JacobianOperator, JacobianTooLargeError, dense_jacobian,
                                jacobian_operator)
from isometry._params import alpha_mask, alpha_values
from isometry._spectrum import ISOMETRY_BAND, METHODS, Spectrum, jacobian_spectrum, spectrum_fn

__version__ = "0.1.0"

__all__ = [
    "ISOMETRY_BAND",
    "METHODS",
    "JacobianOperator",
    "JacobianTooLargeError",
    "Spectrum",
    "alpha_mask",
    "alpha_values",
    "dense_jacobian",
    "from_linen",
    "from_nnx",
    "jacobian_operator",
    "jacobian_spectrum",
    "spectrum_fn",
]
