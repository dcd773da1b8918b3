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


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, settle: float = 0.02) -> dict:
    """Median wall time in seconds of each `fns[name]()`, timed round-robin.

    One round runs every function once, so a change in machine load during the measurement
    affects all of them alike and their ratios stay meaningful on a shared or noisy machine.
    The order rotates from round to round, so no function always takes the first slot of a
    round (which pays for caches the previous round's last call left cold). An untimed pause
    of `settle` seconds before each call lets worker threads of the previous one (OpenMP
    threads spin after their work) go idle.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> dict:
    """What the numbers were measured on."""
    import jax

    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), jax=jax.__version__, device=str(jax.devices()[0]),
                openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"),
                load_average_1min=os.getloadavg()[0])
