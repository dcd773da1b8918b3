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
thrashes on the small matrices of per-input spectra (many times slower than one thread).
Importing isometry sets OPENBLAS_NUM_THREADS=1 unless it is already set (it acts only if no
LAPACK routine ran before this import); set it yourself to override.
"""

import importlib
import os
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_NAMES = {
    "from_linen": "isometry._adapters",
    "from_nnx": "isometry._adapters",
    "JacobianOperator": "isometry.linalg._jacobian",
    "JacobianTooLargeError": "isometry.linalg._jacobian",
    "dense_jacobian": "isometry.linalg._jacobian",
    "jacobian_operator": "isometry.linalg._jacobian",
    "alpha_mask": "isometry._params",
    "alpha_values": "isometry._params",
    "ISOMETRY_BAND": "isometry.spectrum._function",
    "METHODS": "isometry.spectrum._engine",
    "Spectrum": "isometry.spectrum._function",
    "jacobian_spectrum": "isometry.spectrum._function",
    "spectrum_fn": "isometry.spectrum._function",
    "SpectrumFunction": "isometry.spectrum._function",
    "SpectrumResult": "isometry.spectrum._protocol",
    "Auto": "isometry.spectrum._engine",
    "Dense": "isometry.spectrum._engine",
    "Lanczos": "isometry.spectrum._engine",
    "auto": "isometry.spectrum._engine",
    "dense": "isometry.spectrum._engine",
    "engine_of": "isometry.spectrum._engine",
    "lanczos": "isometry.spectrum._engine",
    "DEFAULT_MEMORY_BUDGET": "isometry.linalg._memory",
    "LanczosSpectrum": "isometry.spectrum._lanczos",
    "TopSingularValues": "isometry.spectrum._lanczos_result",
    "hutchinson_chi": "isometry.spectrum._lanczos",
    "lanczos_spectrum": "isometry.spectrum._lanczos",
    "top_singular_values": "isometry.spectrum._lanczos",
    "depth_profile": "isometry.spectrum._layerwise",
    "from_stack": "isometry.spectrum._layerwise",
    "layerwise_chi_fn": "isometry.spectrum._layerwise",
    "layerwise_spectrum_fn": "isometry.spectrum._layerwise",
    "LAYER_AXIS_KEY": "isometry._stack",
    "LayerStack": "isometry._stack",
    "batch_mesh": "isometry.parallel._sharding",
    "collective_counts": "isometry.parallel._sharding",
    "device_mesh": "isometry.parallel._sharding",
    "parse_mesh": "isometry.parallel._sharding",
    "sharded_spectrum_fn": "isometry.parallel._sharding",
    "simulate_devices": "isometry.parallel._sharding",
    "to_host": "isometry.parallel._sharding",
    "Diagnosis": "isometry.diagnosis._diagnose",
    "Finding": "isometry.diagnosis._diagnose",
    "diagnose": "isometry.diagnosis._diagnose",
    "diagnosis_figure": "isometry.plot.diagnosis",
    "RunDiagnosis": "isometry.diagnosis._run",
    "diagnose_run": "isometry.diagnosis._run",
    "TuneResult": "isometry.diagnosis._tune",
    "tune_init": "isometry.diagnosis._tune",
    "Tracker": "isometry.train._tracking",
    "read_metrics": "isometry.train._tracking",
    "TrainConfig": "isometry.train",
}

#: Public submodules, as `iso.toy`, `iso.theory`, `iso.data`, `iso.train` (the loop: `iso.train.train`).
_SUBMODULES = ("data", "theory", "toy", "train")

#: Modules that moved into a concept package: old name -> where its names live now.
_MOVED = {"theory_residual": "isometry.theory", "tracking": "isometry.train._tracking"}

__all__ = sorted([*_NAMES, *_SUBMODULES])


def __getattr__(name: str):
    """Imports a public name's module on first use (PEP 562) and caches the value here.

    Any other submodule is found the same way (`iso.plot`).
    """
    if name.startswith("__"):
        raise AttributeError(f"module 'isometry' has no attribute {name!r}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _MOVED:
        warnings.warn(f"isometry.{name} moved to {_MOVED[name].split('._')[0]}; import the names "
                      f"from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(_MOVED[name])
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
