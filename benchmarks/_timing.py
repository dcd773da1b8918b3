"""Timing shared by the benchmarks: warm up (compile) first, then the median of repeats.

The function timed must block until its result is ready (`block_until_ready()` for JAX).
"""

from __future__ import annotations

import os
import platform
import statistics
import time


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn()` over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    """What the numbers were measured on."""
    import jax

    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), jax=jax.__version__, device=str(jax.devices()[0]),
                openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"),
                load_average_1min=os.getloadavg()[0])
