"""Test configuration: float64 available everywhere, strict rank promotion, one BLAS thread.

Spectral tests run in float64 (docs/theory.md §0); tests of float32 behaviour ask for float32
explicitly. Strict rank promotion catches accidental broadcasting; strict dtype promotion catches
accidental float64 <-> float32 and int -> float mixing.
"""

import os
import tempfile

# One BLAS/LAPACK thread per pytest-xdist worker (importing isometry sets the same default:
# OpenBLAS's own threading thrashes on small SVDs, see isometry/__init__.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Commands run as subprocesses keep compiled programs in a cache of this test session's own
# (isometry.cli.use_compilation_cache), not in the user's ~/.cache.
os.environ.setdefault("ISOMETRY_COMPILATION_CACHE",
                      os.path.join(tempfile.gettempdir(), f"isometry-test-cache-{os.getuid()}"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# The test processes share compiled programs through the same cache folder (xdist workers
# compile many identical small programs); ISOMETRY_COMPILATION_CACHE=off compiles every time.
if os.environ["ISOMETRY_COMPILATION_CACHE"].lower() != "off":
    jax.config.update("jax_compilation_cache_dir", os.environ["ISOMETRY_COMPILATION_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
