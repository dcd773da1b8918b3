"""Small numerical pieces shared by the engine, statistics and plots.

`log10_sigma` is the one place where log10 σ is taken: σ = 0 (a vanished direction) maps to
log10 of the dtype's smallest normal number instead of -inf, so histograms and summaries of
log10 σ never see -inf or NaN.

Examples:
    >>> import numpy as np
    >>> log10_sigma(np.array([1.0, 100.0]))
    array([0., 2.])
    >>> float(log10_sigma(np.array([0.0]))[0]) == float(np.log10(np.finfo(np.float64).tiny))
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["log10_sigma", "tiny"]


def tiny(x) -> float:
    """The smallest positive normal number of `x`'s floating dtype (float64 for non-floats)."""
    dtype = x.dtype if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else np.float64
    return float(np.finfo(dtype).tiny)


def log10_sigma(s):
    """log10 max(σ, tiny): numpy in, numpy out; a JAX array (or tracer) in, JAX out."""
    if isinstance(s, jax.Array):
        return jnp.log10(jnp.maximum(s, jnp.finfo(s.dtype).tiny))
    s = np.asarray(s)
    return np.log10(np.clip(s, tiny(s), None))
