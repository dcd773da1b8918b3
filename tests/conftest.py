"""Test configuration: float64 available everywhere, strict rank promotion.

Spectral tests run in float64 (THEORY.md §0); tests of float32 behaviour ask for float32
explicitly. Strict rank promotion catches accidental broadcasting.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
