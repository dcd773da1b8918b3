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
from isometry import toy  # noqa: E402  (the (1 + αw)^L model of Figure 2, as `iso.toy`)
from isometry import theory  # noqa: E402  (mean field and free probability, as `iso.theory`)
from isometry import data  # noqa: E402  (CIFAR-10, enwik8, text and synthetic data, as `iso.data`)
from isometry.tracking import Tracker, read_metrics  # noqa: E402
from isometry.train import TrainConfig  # noqa: E402  (`iso.train.train(...)`: the loop)

__version__ = "0.1.0"

__all__ = [
    "ISOMETRY_BAND",
    "METHODS",
    "JacobianOperator",
    "JacobianTooLargeError",
    "Spectrum",
    "TrainConfig",
    "Tracker",
    "alpha_mask",
    "alpha_values",
    "data",
    "dense_jacobian",
    "from_linen",
    "from_nnx",
    "jacobian_operator",
    "jacobian_spectrum",
    "read_metrics",
    "spectrum_fn",
    "theory",
    "toy",
    "train",
]
