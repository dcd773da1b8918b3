"""isometry: singular-value spectra of input-output Jacobians, for dynamical-isometry analysis.

    import isometry as iso
    spec = iso.jacobian_spectrum(fn, x)              # dense, jit-compiled
    sfn = iso.spectrum_fn(apply_fn, method="auto")   # pure (params, x[, key]) -> Spectrum
    apply_fn, params = iso.from_nnx(module)

The facade is lazy (PEP 562): `import isometry` loads none of jax, flax, optax, scipy or
matplotlib; each public name below is imported from its module the first time it is used
(`iso.spectrum_fn`, `from isometry import spectrum_fn`), so a command that needs only part of
the package starts fast. `dir(isometry)` and `__all__` list every public name.

Threads: σ comes from LAPACK's SVD (OpenBLAS, through jax and scipy), whose default threading
thrashes on the small matrices of per-input spectra: on a 2-core machine, 8 SVDs of 256x256
took 0.02 s with one thread and 0.7-7.8 s with OpenBLAS's default. Importing isometry sets
OPENBLAS_NUM_THREADS=1 unless it is already set (it acts only if no LAPACK routine ran before
this import); set it yourself to override.
"""

import importlib
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_NAMES = {
    "from_linen": "isometry._adapters",
    "from_nnx": "isometry._adapters",
    "JacobianOperator": "isometry._jacobian",
    "JacobianTooLargeError": "isometry._jacobian",
    "dense_jacobian": "isometry._jacobian",
    "jacobian_operator": "isometry._jacobian",
    "alpha_mask": "isometry._params",
    "alpha_values": "isometry._params",
    "ISOMETRY_BAND": "isometry._spectrum",
    "METHODS": "isometry._spectrum",
    "Spectrum": "isometry._spectrum",
    "jacobian_spectrum": "isometry._spectrum",
    "spectrum_fn": "isometry._spectrum",
    "SpectrumFunction": "isometry._spectrum",
    "SpectrumResult": "isometry._spectra",
    "LanczosSpectrum": "isometry._lanczos",
    "TopSingularValues": "isometry._lanczos",
    "hutchinson_chi": "isometry._lanczos",
    "lanczos_spectrum": "isometry._lanczos",
    "top_singular_values": "isometry._lanczos",
    "depth_profile": "isometry._layerwise",
    "from_stack": "isometry._layerwise",
    "layerwise_chi_fn": "isometry._layerwise",
    "layerwise_spectrum_fn": "isometry._layerwise",
    "LAYER_AXIS_KEY": "isometry._stack",
    "LayerStack": "isometry._stack",
    "batch_mesh": "isometry._sharding",
    "collective_counts": "isometry._sharding",
    "device_mesh": "isometry._sharding",
    "parse_mesh": "isometry._sharding",
    "sharded_spectrum_fn": "isometry._sharding",
    "simulate_devices": "isometry._sharding",
    "to_host": "isometry._sharding",
    "Diagnosis": "isometry._diagnose",
    "Finding": "isometry._diagnose",
    "diagnose": "isometry._diagnose",
    "diagnosis_figure": "isometry.plot.diagnosis",
    "RunDiagnosis": "isometry._diagnose_run",
    "diagnose_run": "isometry._diagnose_run",
    "TuneResult": "isometry._tune",
    "tune_init": "isometry._tune",
    "Tracker": "isometry.tracking",
    "read_metrics": "isometry.tracking",
    "TrainConfig": "isometry.train",
}

#: Public submodules, as `iso.toy`, `iso.theory`, `iso.data`, `iso.train` (the loop: `iso.train.train`).
_SUBMODULES = ("data", "theory", "theory_residual", "toy", "train")

__all__ = sorted([*_NAMES, *_SUBMODULES])


def __getattr__(name: str):
    """Imports a public name's module on first use (PEP 562) and caches the value here.

    Any other submodule is found the same way (`iso.plot`, as the eager facade once gave).
    """
    if name.startswith("__"):
        raise AttributeError(f"module 'isometry' has no attribute {name!r}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        try:
            value = importlib.import_module(f"isometry.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"isometry.{name}":
                raise
            raise AttributeError(f"module 'isometry' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
