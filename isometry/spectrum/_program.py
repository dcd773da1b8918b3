"""What every spectrum factory returns: a callable with its compiled core on show.

`spectrum_fn`, `sharded_spectrum_fn`, `layerwise_spectrum_fn` and `layerwise_chi_fn` return
objects with one shape: `f(*args)` checks the arguments, runs the jitted core and checks the
result (NaN/Inf raise); `f.program` is the jitted core without the checks (to compose it in
larger programs or lower it); `f.trace_count` says how often it was traced (compiled);
`f.compile(*args)` compiles it ahead of time for those argument shapes and returns `run(*args)`
with the same checks. `CompiledFunction` is that shape for the layerwise factories.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax

from isometry.linalg._lapack import lapack_safe

__all__ = ["CompiledFunction"]


class CompiledFunction:
    """`f(*args)`: `check(*args)`, then `finish(program(*args))`.

    Attributes:
      program: the jitted core (`lapack_safe` on the CPU).
      trace_count: how many times the core was traced.
    """

    def __init__(self, core: Callable, check: Callable[..., None] | None = None,
                 finish: Callable[[Any], Any] | None = None):
        self.trace_count = 0
        self._check = check or (lambda *args: None)
        self._finish = finish or (lambda out: out)

        self._signature = inspect.signature(core)

        def counted(*args):
            self.trace_count += 1  # runs once per trace: the compile counter
            return core(*args)

        self.program = jax.jit(lapack_safe(counted))

    def _arguments(self, args, kwargs) -> tuple:
        """The arguments in the core's order, defaults filled in (keywords allowed)."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self._check(*bound.args)
        return bound.args

    def __call__(self, *args, **kwargs):
        return self._finish(self.program(*self._arguments(args, kwargs)))

    def compile(self, *args, **kwargs) -> Callable:
        """The core compiled ahead of time for the shapes of `args`: `run(*args)` with the checks."""
        compiled = self.program.lower(*self._arguments(args, kwargs)).compile()
        return lambda *a, **kw: self._finish(compiled(*self._arguments(a, kw)))
