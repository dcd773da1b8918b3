"""The memory budget: one default, one check, the errors it raises.

Every engine sizes what it will allocate from shapes alone (at trace time) and compares it
with the caller's budget before anything is allocated: the dense Jacobian with its basis or
its SVD workspace, the matrix-free engine's Krylov bases, the stacked Jacobians of a
layerwise profile. `memory_budget_of(None)` is the one default (`DEFAULT_MEMORY_BUDGET`);
`check_fits` is the one check, and its error names the need and the budget the caller passed.
Compiled programs are checked once more against the device's free memory
(`check_program_fits`, XLA's own count).

Example:
    >>> memory_budget_of(None) == DEFAULT_MEMORY_BUDGET, memory_budget_of(2**20)
    (True, 1048576)
    >>> check_fits(3 * 2**30, 2**30, "the dense Jacobian", "use the matrix-free engine")
    Traceback (most recent call last):
    ...
    isometry.linalg._memory.JacobianTooLargeError: the dense Jacobian would need 3.00 GiB, above the memory budget of 1.00 GiB; use the matrix-free engine
"""

from __future__ import annotations

import jax

from isometry._numerics import check_setting

__all__ = ["DEFAULT_MEMORY_BUDGET", "JacobianTooLargeError", "ProgramTooLargeError",
           "check_fits", "check_program_fits", "free_device_memory", "gib", "memory_budget_of"]

#: The default memory budget (bytes) of every engine: what its arrays may take at once.
DEFAULT_MEMORY_BUDGET = 4 * 2**30


class JacobianTooLargeError(MemoryError):
    """An engine's arrays would exceed the memory budget (raised before anything is allocated)."""


class ProgramTooLargeError(MemoryError):
    """A compiled program needs more memory than its device has free (raised before it runs)."""


def gib(nbytes: float) -> str:
    """Bytes as GiB with two decimals ("1.50 GiB")."""
    return f"{nbytes / 2**30:.2f} GiB"


def memory_budget_of(budget: float | None) -> float:
    """The budget a caller passed, or `DEFAULT_MEMORY_BUDGET` for None; ValueError if not > 0."""
    if budget is None:
        return DEFAULT_MEMORY_BUDGET
    return check_setting("memory_budget", budget, low=0, low_open=True)


def check_fits(need: float, budget: float | None, what: str, fix: str) -> float:
    """`need` if it is within the budget, else `JacobianTooLargeError` naming both and the fix."""
    budget = memory_budget_of(budget)
    if need > budget:
        raise JacobianTooLargeError(f"{what} would need {gib(need)}, above the memory budget of "
                                    f"{gib(budget)}; {fix}")
    return need


def free_device_memory(device=None) -> int | None:
    """Bytes free on `device` (default: the first device): the limit minus what is in use on an
    accelerator; MemAvailable of /proc/meminfo on a Linux CPU; None where unknown."""
    device = jax.devices()[0] if device is None else device
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_program_fits(compiled, what: str, fix: str) -> None:
    """`ProgramTooLargeError` when `compiled` (`jax.stages.Compiled`) needs more memory than is
    free on the device: its arguments, outputs and intermediates by XLA's own count, checked
    before it runs (a program that would ask for 960 GB is refused in a line, not killed)."""
    stats = compiled.memory_analysis()
    free = free_device_memory()
    if stats is None or free is None:
        return
    need = (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
    if need > free:
        raise ProgramTooLargeError(
            f"{what} would need {gib(need)} ({gib(stats.temp_size_in_bytes)} of intermediates, "
            f"by XLA's count) but the device has {gib(free)} free; {fix}")
