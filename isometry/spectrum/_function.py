"""Spectra of input-output Jacobians: the dense engine and the dispatcher of both engines.

`spectrum_fn` builds a `SpectrumFunction`: a pure, jitted `(params, x[, key])` that returns a
dense `Spectrum` (the Jacobian and its SVD) or, matrix-free, a `LanczosSpectrum`
(`isometry.spectrum._lanczos`); both implement `isometry.SpectrumResult`. `jacobian_spectrum` does the
same for a plain function `x -> y`.

Precision: a deep network's small singular values sit far below float32 resolution
(σ_min/σ_max < 1e-7 is common at depth ≥ 32). Enable `jax_enable_x64` and pass float64 inputs
when the bottom of the spectrum matters; σ is computed from J by an SVD, never from JJᵀ.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from isometry.linalg._jacobian import (batch_size, check_floating, dense_jacobian, describe_shapes,
                                       flat_sizes)
from isometry.linalg._lapack import lapack_safe
from isometry.linalg._memory import check_fits, check_program_fits, gib, memory_budget_of
from isometry.spectrum._engine import (AUTO_DENSE_MAX_DIM, METHODS, Auto, Dense, Engine, Lanczos,
                                       engine_of)
from isometry.spectrum._lanczos import lanczos_spectrum
from isometry.spectrum._protocol import (ISOMETRY_BAND, PRECISION_STATISTICS, SUMMARY_STATISTICS,
                               raise_if_nonfinite, raise_if_nonfinite_values, summarize)
from isometry.spectrum._dense import Spectrum

__all__ = ["Spectrum", "ISOMETRY_BAND", "spectrum_fn", "SpectrumFunction", "jacobian_spectrum",
           "METHODS", "AUTO_DENSE_MAX_DIM", "check_dense_fits", "check_lanczos_fits",
           "SUMMARY_STATISTICS", "PRECISION_STATISTICS", "summarize"]

Array = Any


# --- computing spectra ----------------------------------------------------------------------

# An SVD without vectors needs about one more copy of J as workspace.
_SVD_WORKSPACE_FACTOR = 2


def check_dense_fits(n_in: int, n_out: int, dtype, memory_budget: float | None) -> int:
    """Bytes one dense Jacobian and its SVD need; raises `JacobianTooLargeError` above budget."""
    j_bytes = n_in * n_out * jnp.dtype(dtype).itemsize
    return check_fits(j_bytes * _SVD_WORKSPACE_FACTOR, memory_budget,
                      f"the dense Jacobian ({gib(j_bytes)}: {n_out} outputs x {n_in} inputs x "
                      f"{jnp.dtype(dtype).name}) with its SVD",
                      "use the matrix-free engine (engine=isometry.lanczos(), `--method lanczos` "
                      "on the command line) or raise memory_budget")


def check_lanczos_fits(engine: Lanczos, n_in: int, n_out: int, dtype) -> int:
    """Bytes of the matrix-free engine's Krylov bases (U and V of the top run and of every
    density probe); `JacobianTooLargeError` above the engine's budget."""
    n_short, n_long = min(n_in, n_out), max(n_in, n_out)
    steps = min(engine.max_steps, n_short) * engine.top_run + engine.num_probes * min(
        engine.num_steps, n_short)
    need = (steps * (n_short + n_long) + engine.chi_probes * n_short) * jnp.dtype(dtype).itemsize
    return check_fits(need, engine.memory_budget,
                      f"the matrix-free engine's Krylov vectors ({steps} pairs of {n_short} + "
                      f"{n_long} values)", "lower max_steps, num_steps or num_probes, or raise "
                      "memory_budget")


def svd_spectrum(j: Array, n_in: int, n_out: int) -> Spectrum:
    """Spectrum of a dense Jacobian given as J or Jᵀ (same σ), by an SVD (never of JJᵀ).

    NaN/Inf entries are counted into `n_nonfinite` and zeroed before the SVD (LAPACK may not
    return on them). LAPACK wants column-major input: the SVD is taken of the transpose of
    the row-major `j` (column-major for free), which keeps XLA from storing the tangents that
    build J column-major and transposing them back at every layer.
    """
    finite = jnp.isfinite(j)
    if jnp.dtype(j.dtype).itemsize < 4:  # LAPACK has no float16/bfloat16 SVD
        warnings.warn(f"the Jacobian is {jnp.dtype(j.dtype).name}, which LAPACK's SVD does not "
                      f"take: its singular values are computed in float32 (pass float32 or "
                      f"float64 inputs and parameters to avoid this)", stacklevel=2)
        j = j.astype(jnp.float32)
    s = jnp.linalg.svd(jnp.where(finite, j, 0).T, compute_uv=False)
    return Spectrum.from_singular_values(s, n_in, n_out, jnp.sum(~finite, dtype=jnp.int32))


def _dense_spectrum(fn: Callable, x: Any, engine: Dense) -> Spectrum:
    """Spectrum of one Jacobian: J by `dense_jacobian`, σ by `svd_spectrum`."""
    n_in, n_out, _ = flat_sizes(fn, x)
    j = dense_jacobian(fn, x, mode=engine.mode, chunk_size=engine.chunk_size, transposed_ok=True,
                       memory_budget=engine.memory_budget)
    return svd_spectrum(j, n_in, n_out)


def _count_nonfinite(tree) -> Array:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return sum((jnp.sum(~jnp.isfinite(leaf), dtype=jnp.int32) for leaf in leaves),
               jnp.zeros((), jnp.int32))


def _as_key(key):
    """A PRNG key from a key, a raw uint32 key, or an int seed (None stays None)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if key is not None and not hasattr(key, "dtype"):
        raise TypeError(f"key must be a PRNG key such as jax.random.key(0) (or an int seed), got "
                        f"{type(key).__name__}")
    return key


def spectrum_fn(apply_fn: Callable, method: str | Engine = "auto", *, engine: Engine | None = None,
                batched: bool = False, **settings) -> "SpectrumFunction":
    """A pure, jitted `(params, x[, key]) -> Spectrum` for the Jacobian J = ∂apply_fn(params, x)/∂x.

    The returned function is compiled once per input shape and dtype: new parameter values of
    the same shapes reuse the compiled code (no retracing).

    Args:
      apply_fn: `(params, x) -> y`; x and y arrays or pytrees of floating arrays.
      method: the shorthand "dense" (full J and its SVD), "lanczos" (matrix-free Golub–Kahan;
        its random probes use `key`, default PRNGKey(0)) or "auto" (dense while
        max(n_in, n_out) ≤ 4096, else lanczos), or an engine object.
      engine: the engine's settings, `iso.dense(...)`, `iso.lanczos(...)` or `iso.auto(...)`
        (`isometry.spectrum._engine`); overrides `method`.
      batched: if True, the leading axis of every leaf of x is a batch: one spectrum per input
        (vmapped; mapped in chunks when the batch's dense Jacobians exceed the memory budget).
      **settings: the shorthand's settings, validated at once as `engine_of(method,
        **settings)` does (`spectrum_fn(f, "lanczos", k=5)` is `engine=iso.lanczos(k=5)`): an
        unknown name or a bad value raises here, naming it.

    Returns:
      A `SpectrumFunction` `sfn(params, x, key=None) -> Spectrum` (or the matrix-free
      `LanczosSpectrum`). Outside of a trace it raises FloatingPointError when the input, the
      output or J has NaN/Inf entries (the message says which). `sfn.program(params, x, key)`
      is the compiled core: it returns `(spectrum, {"input": count, "output": count})` of
      non-finite values; `sfn.trace_count` says how often it was traced (compiled);
      `sfn.compile(params, x)` compiles ahead of time.

    Example:
      >>> import jax, models, isometry as iso
      >>> from flax import nnx
      >>> apply_fn, params = iso.from_nnx(models.FullyConnected(depth=2, width=8, rngs=nnx.Rngs(0)))
      >>> sfn = iso.spectrum_fn(apply_fn, engine=iso.dense())
      >>> spec = sfn(params, jax.random.normal(jax.random.key(1), (8,)))
      >>> spec.singular_values.shape, sfn.trace_count
      ((8,), 1)
    """
    return SpectrumFunction(apply_fn, engine_of(method, **settings) if engine is None
                            else engine_of(engine, **settings), batched=batched)


class SpectrumFunction:
    """The callable `spectrum_fn` returns: `sfn(params, x, key=None)` -> a spectrum result.

    Attributes:
      program: the jitted core `(params, x, key) -> (spectrum, {"input": n, "output": n})`
        (NaN/Inf counts of the input and the output; nothing raised): to compose it in
        larger programs (`jax.vmap`, `jax.lax.map`) or lower it (`sfn.program.lower(...)`).
      trace_count: how many times `program` was traced, i.e. compiled: once per input shape
        and dtype (new parameter values of the same shapes never add one).
      engine: the engine's settings (`Dense`, `Lanczos` or `Auto`).
      method: the engine's name ("dense", "lanczos" or "auto").
      batched: as passed to `spectrum_fn`.
    """

    def __init__(self, apply_fn: Callable, engine: Engine | str = "auto", *, batched: bool = False):
        self.apply_fn, self.engine, self.batched = apply_fn, engine_of(engine), batched
        self.method = self.engine.name
        self.trace_count = 0
        self._compiled = {}  # one compiled program per argument signature (shapes, dtypes)
        self.program = jax.jit(lapack_safe(self._core))  # CPU: no batched LAPACK (deadlocks)

    def __call__(self, params, x, key=None):
        check_floating(x)
        key = _as_key(key)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((params, x, key))):
            return _checked(self.program, params, x, key)  # inside a trace: part of a larger program
        signature = jax.tree_util.tree_map(jax.typeof, (params, x, key))
        signature = (jax.tree_util.tree_structure(signature), tuple(jax.tree_util.tree_leaves(signature)))
        run = self._compiled.get(signature)
        if run is None:  # size checks run while tracing, the memory check after compiling
            run = self._compiled[signature] = self.compile(params, x, key)
        return run(params, x, key)

    def compile(self, params, x, key=None) -> Callable:
        """`program` lowered and compiled ahead of time for the shapes of (params, x, key).

        Returns `run(params, x, key=None)`, the same as calling `sfn` (same checks) for
        arguments of those shapes and dtypes, never tracing again: for a caller that times
        compilation and computation apart (`isometry spectrum --json`). Counts in
        `trace_count`; the errors of a trace (sizes, budget) are raised here.

        Example:
          >>> import jax.numpy as jnp, isometry as iso
          >>> sfn = iso.spectrum_fn(lambda w, x: w * x)
          >>> run = sfn.compile(jnp.ones(3), jnp.ones(3))
          >>> [float(v) for v in run(jnp.arange(1.0, 4.0), jnp.ones(3)).singular_values]
          [3.0, 2.0, 1.0]
          >>> sfn.trace_count
          1
        """
        check_floating(x)
        program = self.program.lower(params, x, _as_key(key)).compile()
        check_program_fits(program, f"the spectrum of an input {describe_shapes(x)}",
                           "use a smaller input (fewer tokens, a smaller image), a smaller "
                           "chunk_size (dense engine) or fewer probes, or a larger device")

        def run(params, x, key=None):
            check_floating(x)
            return _checked(program, params, x, key)

        return run

    def _engine_for(self, params, x) -> tuple[Dense | Lanczos, int]:
        """The engine that runs at this input's size and the bytes it needs (budget checked)."""
        n_in, n_out, dtype = flat_sizes(lambda xx: self.apply_fn(params, xx), x)
        engine = self.engine.pick(n_in, n_out) if isinstance(self.engine, Auto) else self.engine
        if isinstance(engine, Dense):
            return engine, check_dense_fits(n_in, n_out, dtype, engine.memory_budget)
        return engine, check_lanczos_fits(engine, n_in, n_out, dtype)

    def _one(self, params, x, key):
        fn = lambda xx: self.apply_fn(params, xx)  # noqa: E731
        # the forward output (XLA shares it with the Jacobian's own forward pass): NaN/Inf
        # there can leave J finite (ReLU' = 0 at NaN), so it is checked on its own
        engine, _ = self._engine_for(params, x)  # sizes first: an empty input fails here
        counts = {"input": _count_nonfinite(x), "output": _count_nonfinite(fn(x))}
        if isinstance(engine, Dense):
            return _dense_spectrum(fn, x, engine), counts
        return lanczos_spectrum(fn, x, jax.random.key(0) if key is None else key,
                                **engine.options()), counts

    def _core(self, params, x, key):
        self.trace_count += 1  # runs once per trace: the compile counter
        if not self.batched:
            return self._one(params, x, key)
        batch = batch_size(x)
        x0 = jax.tree_util.tree_map(lambda leaf: leaf[0], x)
        keys = None if key is None else jax.random.split(key, batch)
        engine, per_sample = self._engine_for(params, x0)
        budget = memory_budget_of(engine.memory_budget)
        if per_sample * batch > budget:
            size = max(1, int(budget // per_sample))
            return jax.lax.map(lambda a: self._one(params, *a), (x, keys), batch_size=size)
        return jax.vmap(self._one, in_axes=(None, 0, 0 if keys is not None else None))(
            params, x, keys)


def _checked(program, params, x, key):
    """`program(params, x, key)`'s spectrum, FloatingPointError on NaN/Inf input, output or J."""
    spec, counts = program(params, x, _as_key(key))
    raise_if_nonfinite_values(counts)
    raise_if_nonfinite(spec)
    return spec


@functools.lru_cache(maxsize=64)
def _cached_spectrum_fn(program, engine: Engine, batched: bool) -> SpectrumFunction:
    """One compiled `spectrum_fn` per traced program (`_ClosedProgram`), whatever its constants."""
    return SpectrumFunction(program, engine, batched=batched)


class _ClosedProgram:
    """`fn` traced to a jaxpr whose closed-over arrays are arguments: `(consts, x) -> y`.

    Equal (and equally hashed) when the jaxpr's text and the pytree structures are equal, so
    a function whose captured arrays changed values reuses the compiled code with the new
    values as arguments, and one whose program changed compiles anew. It keeps no constants
    (`trace` returns them beside it), so a cached program holds no arrays alive.
    """

    @classmethod
    def trace(cls, fn: Callable, x_example: Any) -> tuple["_ClosedProgram", list]:
        # a fresh wrapper each time: jax caches traces by function identity, which would
        # bring back the constants of the first trace
        closed, out_shape = jax.make_jaxpr(lambda xx: fn(xx), return_shape=True)(x_example)
        return cls(closed.jaxpr, x_example, out_shape), list(closed.consts)

    def __init__(self, jaxpr, x_example: Any, out_shape: Any):
        self.jaxpr = jaxpr
        self.in_tree = jax.tree_util.tree_structure(x_example)
        self.out_tree = jax.tree_util.tree_structure(out_shape)
        self._key = (str(self.jaxpr), self.in_tree, self.out_tree)

    def __call__(self, consts, x):
        flat = jax.tree_util.tree_leaves(x)
        out = jax.core.eval_jaxpr(self.jaxpr, consts, *flat)
        return jax.tree_util.tree_unflatten(self.out_tree, out)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _ClosedProgram) and self._key == other._key


def jacobian_spectrum(fn: Callable, x: Any, *, method: str | Engine = "dense",
                      engine: Engine | None = None, batched: bool = False, key=None,
                      **settings) -> Spectrum:
    """Singular values of J = ∂fn(x)/∂x, by a dense Jacobian and its SVD (jit-compiled).

    The dense engine unless `engine` (or `method`) says otherwise.

    Args:
      fn: `x -> y`, x and y arrays or pytrees of floating arrays (flattened; J may be
        rectangular).
      x: the input. With `batched=True` the leading axis of every leaf is a batch.
      method, engine, batched, **settings: as in `spectrum_fn` (`mode`, `chunk_size`,
        `memory_budget` are the dense engine's settings).
      key: PRNG key of the matrix-free engine (None: PRNGKey(0)).

    Returns:
      `Spectrum` with σ descending (leading batch axis kept when batched).

    Example:
      >>> import jax, jax.numpy as jnp, isometry as iso
      >>> q1, q2 = (jax.random.orthogonal(k, 4) for k in jax.random.split(jax.random.key(0)))
      >>> s = jnp.array([3.0, 2.0, 1.0, 0.5])
      >>> spec = iso.jacobian_spectrum(lambda x: q2 @ (s * (q1 @ x)), jnp.ones(4))
      >>> [round(float(v), 3) for v in spec.singular_values]
      [3.0, 2.0, 1.0, 0.5]

    `fn` is traced at every call, so arrays it closes over are read at their current values
    (never frozen at a first call); calls whose traced program is the same reuse the compiled
    code. For a model whose parameters change, `spectrum_fn(apply_fn)(params, x)` avoids the
    tracing.
    """
    check_floating(x)
    engine_of(method if engine is None else engine, **settings)  # settings fail before tracing
    if batched:
        batch_size(x)  # one leading batch axis, not empty
    example = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf)[1:] if batched else jnp.shape(leaf),
                                          jnp.result_type(leaf)), x)
    n_in = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(example))
    if n_in == 0:
        raise ValueError(f"the input is empty (shape {[l.shape for l in jax.tree_util.tree_leaves(x)]}): "
                         f"a Jacobian needs at least one input value")
    program, consts = _ClosedProgram.trace(fn, example)
    engine = engine_of(method if engine is None else engine, **settings)
    sfn = _cached_spectrum_fn(program, engine, batched)
    return sfn(consts, x, key)
