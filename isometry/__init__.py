"""isometry: singular-value spectra of input-output Jacobians, for dynamical-isometry analysis.

    import isometry as iso
    spec = iso.jacobian_spectrum(fn, x)              # dense, jit-compiled
    sfn = iso.spectrum_fn(apply_fn, method="auto")   # pure (params, x[, key]) -> Spectrum
    apply_fn, params = iso.from_nnx(module)

Threads: σ comes from LAPACK's SVD (OpenBLAS, through jax and scipy), whose default threading
thrashes on the small matrices of per-input spectra: on a 2-core machine, 8 SVDs of 256x256
took 0.02 s with one thread and 0.7-7.8 s with OpenBLAS's default. Importing isometry sets
OPENBLAS_NUM_THREADS=1 unless it is already set (it acts only if no LAPACK routine ran before
this import); set it yourself to override.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from isometry._adapters import from_linen, from_nnx
from isometry._jacobian import (JacobianOperator, JacobianTooLargeError, dense_jacobian,
                                jacobian_operator)
from isometry._params import alpha_mask, alpha_values
from isometry._spectra import SpectrumResult
from isometry._spectrum import (ISOMETRY_BAND, METHODS, Spectrum, SpectrumFunction,
                                jacobian_spectrum, spectrum_fn)
from isometry._lanczos import (LanczosSpectrum, TopSingularValues, hutchinson_chi,
                               lanczos_spectrum, top_singular_values)
from isometry._layerwise import depth_profile, from_stack, layerwise_chi_fn, layerwise_spectrum_fn
from isometry._stack import LAYER_AXIS_KEY, LayerStack
from isometry._sharding import (batch_mesh, collective_counts, device_mesh, parse_mesh,
                                sharded_spectrum_fn, simulate_devices, to_host)
from isometry._diagnose import Diagnosis, Finding, diagnose  # noqa: E402
from isometry._plot_diagnosis import diagnosis_figure  # noqa: E402
from isometry._tune import TuneResult, tune_init  # noqa: E402
from isometry import toy  # noqa: E402  (the (1 + αw)^L model of Figure 2, as `iso.toy`)
from isometry import theory  # noqa: E402  (mean field and free probability, as `iso.theory`)
from isometry import theory_residual  # noqa: E402  (residual/ReZero nets at α > 0)
from isometry import data  # noqa: E402  (CIFAR-10, enwik8, text and synthetic data, as `iso.data`)
from isometry.tracking import Tracker, read_metrics  # noqa: E402
from isometry.train import TrainConfig  # noqa: E402  (`iso.train.train(...)`: the loop)

__version__ = "0.1.0"

__all__ = [
    "ISOMETRY_BAND",
    "METHODS",
    "Diagnosis",
    "Finding",
    "JacobianOperator",
    "LAYER_AXIS_KEY",
    "LayerStack",
    "JacobianTooLargeError",
    "LanczosSpectrum",
    "Spectrum",
    "SpectrumFunction",
    "SpectrumResult",
    "TopSingularValues",
    "TrainConfig",
    "Tracker",
    "TuneResult",
    "alpha_mask",
    "alpha_values",
    "batch_mesh",
    "collective_counts",
    "data",
    "dense_jacobian",
    "diagnose",
    "diagnosis_figure",
    "device_mesh",
    "depth_profile",
    "from_linen",
    "from_nnx",
    "from_stack",
    "hutchinson_chi",
    "jacobian_operator",
    "jacobian_spectrum",
    "lanczos_spectrum",
    "parse_mesh",
    "layerwise_chi_fn",
    "layerwise_spectrum_fn",
    "read_metrics",
    "sharded_spectrum_fn",
    "simulate_devices",
    "spectrum_fn",
    "theory",
    "theory_residual",
    "top_singular_values",
    "to_host",
    "toy",
    "train",
    "tune_init",
]
