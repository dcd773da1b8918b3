"""Spectra of Jacobians: the result protocol, the dense and matrix-free engines, layerwise.

| module | owns |
| --- | --- |
| `_protocol` | `SpectrumResult` (what every result answers) and the statistics both engines share |
| `_dense` | `Spectrum`: every σ of J, from the dense SVD |
| `_lanczos_result` | `LanczosSpectrum`: top k σ, an SLQ density of log10 σ, Hutchinson χ |
| `_lanczos` | the matrix-free engine: `lanczos_spectrum`, `top_singular_values`, `hutchinson_chi` |
| `_engine` | engine settings: `dense(...)`, `lanczos(...)`, `auto(...)`, validated where they are written |
| `_function` | `spectrum_fn` / `SpectrumFunction` (one compiled program per signature), `jacobian_spectrum` |
| `_layerwise` | spectra and χ of ∂x_l/∂x_0 at every depth l of a layer stack |
"""

from isometry.spectrum._dense import Spectrum
from isometry.spectrum._engine import Auto, Dense, Lanczos, auto, dense, engine_of, lanczos
from isometry.spectrum._function import SpectrumFunction, jacobian_spectrum, spectrum_fn
from isometry.spectrum._lanczos import hutchinson_chi, lanczos_spectrum, top_singular_values
from isometry.spectrum._lanczos_result import LanczosSpectrum
from isometry.spectrum._layerwise import (depth_profile, from_stack, layerwise_chi_fn,
                                          layerwise_spectrum_fn)
from isometry.spectrum._protocol import SpectrumResult

__all__ = ["Dense", "Lanczos", "Auto", "dense", "lanczos", "auto", "engine_of", "Spectrum", "LanczosSpectrum", "SpectrumResult", "SpectrumFunction", "spectrum_fn",
           "jacobian_spectrum", "lanczos_spectrum", "top_singular_values", "hutchinson_chi",
           "layerwise_spectrum_fn", "layerwise_chi_fn", "from_stack", "depth_profile"]
