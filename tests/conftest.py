"""Test configuration: float64 available everywhere, strict rank promotion, one BLAS thread.

Spectral tests run in float64 (THEORY.md §0); tests of float32 behaviour ask for float32
explicitly. Strict rank promotion catches accidental broadcasting.
"""

import os

# The LAPACK SVD behind jnp.linalg.svd (OpenBLAS) thrashes when its threads compete with
# pytest-xdist workers: 8 SVDs of 256x256 take 0.2 s with default threads and 0.03 s with one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
