"""The `Spectrum` result: singular values of an input-output Jacobian and their statistics.

For J = ∂y/∂x with n_in inputs and n_out outputs, `Spectrum` holds the k = min(n_in, n_out)
singular values σ_1 ≥ … ≥ σ_k of J and

    chi = ||J||_F² / n_in = (1/n_in) Σ_i σ_i²,

the mean squared singular value (m₁ in THEORY.md when J is square). Leading batch axes (one
spectrum per input of a batch) are kept on every field and every statistic.

Precision: a deep network's small singular values sit far below float32 resolution
(σ_min/σ_max < 1e-7 is common at depth ≥ 32). Enable `jax_enable_x64` and pass float64 inputs
when the bottom of the spectrum matters; σ is computed from J by an SVD, never from JJᵀ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from isometry._jacobian import (DEFAULT_MEMORY_BUDGET, JacobianTooLargeError, check_floating,
                                dense_jacobian, flat_sizes, resolve_mode)

__all__ = ["Spectrum", "ISOMETRY_BAND", "spectrum_fn", "jacobian_spectrum", "METHODS"]

#: The band of singular values counted as "near isometry" by `Spectrum.isometry_share`.
ISOMETRY_BAND = (0.5, 2.0)

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Singular values of a Jacobian J (n_out × n_in), descending, with summary statistics.

    A frozen pytree dataclass: it passes through `jax.jit` and `jax.vmap`.

    Attributes:
      singular_values: σ, shape (..., k), k = min(n_in, n_out), descending.
      chi: ||J||_F² / n_in, shape (...).
      n_nonfinite: number of NaN/Inf entries found in J (0 for a valid spectrum), shape (...).
      n_in: number of inputs (static).
      n_out: number of outputs (static).

    Example:
      >>> spec = iso.jacobian_spectrum(lambda x: 2.0 * x, jnp.ones(3))
      >>> spec.singular_values            # [2., 2., 2.]
      >>> spec.chi                        # 4.0
    """

    singular_values: Array
    chi: Array
    n_nonfinite: Array
    n_in: int = dataclasses.field(metadata=dict(static=True))
    n_out: int = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_singular_values(cls, s: Array, n_in: int, n_out: int, n_nonfinite: Array | None = None):
        """Builds a Spectrum from descending singular values `s` of shape (..., k)."""
        chi = jnp.sum(jnp.square(s), axis=-1) / n_in
        if n_nonfinite is None:
            n_nonfinite = jnp.zeros(s.shape[:-1], jnp.int32)
        return cls(s, chi, n_nonfinite, n_in, n_out)

    # --- statistics (all reduce over the last axis, keep batch axes) ---------------------
    @property
    def log_singular_values(self) -> Array:
        """Natural log of σ (−inf where σ = 0)."""
        return jnp.log(self.singular_values)

    def _nonzero_log(self) -> tuple[Array, Array, Array]:
        """(ln σ with zeros masked to 0, the mask σ > 0, the number of σ > 0)."""
        s = self.singular_values
        positive = s > 0
        log = jnp.where(positive, jnp.log(jnp.where(positive, s, 1)), 0)
        return log, positive, jnp.sum(positive, axis=-1)

    @property
    def mean_log(self) -> Array:
        """Mean of ln σ over the σ > 0: the log of their geometric mean.

        Exact zeros (a dead ReLU unit, a zero-initialized branch) have no logarithm: they are
        left out and counted by `zero_share`; −inf when every σ is 0.
        """
        log, _, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, mean, -jnp.inf).astype(log.dtype)

    @property
    def std_log(self) -> Array:
        """Standard deviation of ln σ over the σ > 0 (NaN when every σ is 0)."""
        log, positive, count = self._nonzero_log()
        mean = jnp.sum(log, axis=-1, keepdims=True) / jnp.maximum(count, 1)[..., None]
        var = jnp.sum(jnp.where(positive, jnp.square(log - mean), 0), axis=-1) / jnp.maximum(count, 1)
        return jnp.where(count > 0, jnp.sqrt(var), jnp.nan).astype(log.dtype)

    @property
    def zero_share(self) -> Array:
        """Share of σ that are exactly 0 (left out of `mean_log`, `std_log` and histograms)."""
        s = self.singular_values
        return jnp.mean(s == 0, axis=-1, dtype=s.dtype)

    @property
    def resolution(self) -> Array:
        """σ_max · ε · max(n_in, n_out): σ below it are round-off of the SVD in this dtype."""
        s = self.singular_values
        return self.sigma_max * jnp.finfo(s.dtype).eps * max(self.n_in, self.n_out)

    @property
    def below_resolution(self) -> Array:
        """Share of σ below `resolution` (zeros included): noise, not the network's spectrum.

        When it matters, compute in float64 (`jax_enable_x64`, float64 parameters and inputs).
        """
        s = self.singular_values
        return jnp.mean((s < self.resolution[..., None]) | (s == 0), axis=-1, dtype=s.dtype)

    @property
    def sigma_max(self) -> Array:
        """Largest singular value (the operator norm of J)."""
        return self.singular_values[..., 0]

    @property
    def sigma_min(self) -> Array:
        """Smallest of the k = min(n_in, n_out) singular values."""
        return self.singular_values[..., -1]

    @property
    def condition_number(self) -> Array:
        """σ_max / σ_min (inf when σ_min = 0)."""
        return self.sigma_max / self.sigma_min

    @property
    def isometry_share(self) -> Array:
        """Share of σ inside `ISOMETRY_BAND` = [0.5, 2]: 1 for a perfectly isometric J."""
        lo, hi = ISOMETRY_BAND
        s = self.singular_values
        return jnp.mean((s >= lo) & (s <= hi), axis=-1, dtype=s.dtype)

    def histogram(self, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                  density: bool = True):
        """Histogram of log10 σ over all spectra in the batch (host-side, numpy).

        Exact zeros have no logarithm: they are left out (`zero_share` counts them), and the
        default range is that of the σ > 0. With `density`, the area is the share of non-zero σ
        inside the range (1 when there are no zeros), so spectra with and without zeros can
        share an axis; counts are 0 everywhere when every σ is 0.

        Args:
          bins: number of bins or bin edges.
          range: (lo, hi) in log10 σ; defaults to the range of the non-zero σ.
          density: normalize to a probability density in log10 σ (over all σ, zeros included).

        Returns:
          (counts, edges) as numpy arrays.
        """
        s = np.asarray(self.singular_values, dtype=np.float64).ravel()
        log10 = np.log10(s[s > 0])
        if range is None and np.ndim(bins) == 0:
            range = (float(log10.min()), float(log10.max())) if log10.size else (-1.0, 1.0)
            if range[1] - range[0] < 1e-12:
                range = (range[0] - 0.5, range[1] + 0.5)
        counts, edges = np.histogram(log10, bins=bins, range=range)
        if density:
            return counts / (max(s.size, 1) * np.diff(edges)), edges
        return counts, edges

    def summary(self) -> dict[str, Any]:
        """The statistics as plain Python floats (lists for a batch) for tables and JSON."""
        return summarize(self)


#: The statistics `summary()` reports, shared by `Spectrum` and the matrix-free result.
SUMMARY_STATISTICS = ("chi", "mean_log", "std_log", "sigma_max", "sigma_min",
                      "condition_number", "isometry_share")
#: More statistics, reported by results that have them (the dense `Spectrum` does).
PRECISION_STATISTICS = ("zero_share", "below_resolution")


def summarize(spec) -> dict[str, Any]:
    """`SUMMARY_STATISTICS` and `PRECISION_STATISTICS` of a spectrum result as plain Python
    floats (lists for a batch); NaN for a statistic the result cannot give (the matrix-free
    result has no zero share)."""
    out = {}
    for name in SUMMARY_STATISTICS + PRECISION_STATISTICS:
        value = getattr(spec, name, None)
        if value is None:
            value = np.full(np.shape(spec.chi), np.nan)
        out[name] = np.asarray(value, dtype=np.float64).tolist()
    return out


# --- computing spectra ----------------------------------------------------------------------

METHODS = ("auto", "dense", "lanczos")
#: `method="auto"` uses the dense engine while max(n_in, n_out) is at most this.
AUTO_DENSE_MAX_DIM = 4096
# An SVD without vectors needs about one more copy of J as workspace.
_SVD_WORKSPACE_FACTOR = 2


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def check_dense_fits(n_in: int, n_out: int, dtype, memory_budget: float) -> int:
    """Bytes one dense Jacobian and its SVD need; raises `JacobianTooLargeError` above budget."""
    itemsize = jnp.dtype(dtype).itemsize
    j_bytes = n_in * n_out * itemsize
    need = j_bytes * _SVD_WORKSPACE_FACTOR
    if need > memory_budget:
        raise JacobianTooLargeError(
            f"the dense Jacobian would be {_gib(j_bytes)} ({n_out} outputs x {n_in} inputs x "
            f"{jnp.dtype(dtype).name}), about {_gib(need)} with its SVD, above the memory budget "
            f"of {_gib(memory_budget)}; use method=\"lanczos\" (matrix-free; `--method lanczos` "
            f"on the command line) or raise memory_budget")
    return need


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


def _dense_spectrum(fn: Callable, x: Any, mode: str, chunk_size: int | None,
                    memory_budget: float = DEFAULT_MEMORY_BUDGET) -> Spectrum:
    """Spectrum of one Jacobian: J by `dense_jacobian`, σ by `svd_spectrum`."""
    n_in, n_out, _ = flat_sizes(fn, x)
    j = dense_jacobian(fn, x, mode=mode, chunk_size=chunk_size, transposed_ok=True,
                       memory_budget=memory_budget)
    return svd_spectrum(j, n_in, n_out)


def _count_nonfinite(tree) -> Array:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return sum((jnp.sum(~jnp.isfinite(leaf), dtype=jnp.int32) for leaf in leaves),
               jnp.zeros((), jnp.int32))


def _raise_if_nonfinite_values(counts: dict) -> None:
    """FloatingPointError naming the input or the output when either holds NaN/Inf."""
    if any(isinstance(v, jax.core.Tracer) for v in counts.values()):
        return
    for what, hint in (("input", "check the data (e.g. jnp.isfinite(x).all())"),
                       ("output", "the parameters or the function are not finite there (NaN/Inf "
                                  "weights, log of a negative number, an overflow); a ReLU's "
                                  "derivative at NaN is 0, so J alone would look finite")):
        n = int(np.sum(np.asarray(counts[what])))
        if n:
            raise FloatingPointError(
                f"the model's {what} has {n} non-finite values (NaN/Inf): {hint}; no spectrum "
                f"is computed from it")


def _as_key(key):
    """A PRNG key from a key, a raw uint32 key, or an int seed (None stays None)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if key is not None and not hasattr(key, "dtype"):
        raise TypeError(f"key must be a PRNG key such as jax.random.key(0) (or an int seed), got "
                        f"{type(key).__name__}")
    return key


def _raise_if_nonfinite(spec) -> None:
    bad = spec.n_nonfinite
    if isinstance(bad, jax.core.Tracer):
        return
    total = int(np.sum(np.asarray(bad)))
    if total:
        entries = spec.n_in * spec.n_out * max(1, int(np.prod(np.shape(bad))))
        raise FloatingPointError(
            f"the Jacobian has {total} non-finite entries (NaN/Inf) out of {entries}: the model's "
            f"output or its derivative is not finite at these parameters and inputs; check the "
            f"forward pass (e.g. with jax.config.update('jax_debug_nans', True)), the inputs' "
            f"scale, or use float64")


def spectrum_fn(apply_fn: Callable, method: str = "auto", *, batched: bool = False,
                mode: str = "auto", chunk_size: int | None = None,
                memory_budget: float = DEFAULT_MEMORY_BUDGET,
                auto_dense_max_dim: int = AUTO_DENSE_MAX_DIM, **lanczos_options) -> Callable:
    """A pure, jitted `(params, x[, key]) -> Spectrum` for the Jacobian J = ∂apply_fn(params, x)/∂x.

    The returned function is compiled once per input shape and dtype: new parameter values of
    the same shapes reuse the compiled code (no retracing).

    Args:
      apply_fn: `(params, x) -> y`; x and y arrays or pytrees of floating arrays.
      method: "dense" (full J and its SVD), "lanczos" (matrix-free Golub–Kahan; needs a key for
        its random probes, defaults to PRNGKey(0)), or "auto" (dense while
        max(n_in, n_out) ≤ `auto_dense_max_dim`, else lanczos).
      batched: if True, the leading axis of every leaf of x is a batch: one spectrum per input
        (vmapped; mapped in chunks when the batch's Jacobians exceed `memory_budget`).
      mode: "fwd", "rev" or "auto" (fewer products) for the dense Jacobian.
      chunk_size: at most this many Jacobian-vector products at once (bounds activation memory).
      memory_budget: bytes the dense Jacobians (with SVD workspace) may take; a single Jacobian
        above it raises `JacobianTooLargeError` before anything is allocated.
      auto_dense_max_dim: the dense/lanczos switch of `method="auto"`.
      **lanczos_options: passed to the matrix-free engine (see `isometry.lanczos_spectrum`).

    Returns:
      `sfn(params, x, key=None) -> Spectrum` (or the matrix-free result for "lanczos").
      Outside of a trace it raises FloatingPointError when the input, the output or J has
      NaN/Inf entries (the message says which). `sfn.jitted(params, x, key)` is the compiled
      core: it returns `(spectrum, {"input": count, "output": count})` of non-finite values.

    Example:
      >>> apply_fn, params = iso.from_nnx(models.FullyConnected(depth=8, width=64, rngs=nnx.Rngs(0)))
      >>> sfn = iso.spectrum_fn(apply_fn)
      >>> spec = sfn(params, jax.random.normal(jax.random.key(1), (64,)))
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    resolve_mode(mode, 1, 1)  # validates `mode`

    def dense_bytes(params, x):
        """Bytes of one dense Jacobian with its SVD (checked against the budget), None if matrix-free."""
        n_in, n_out, dtype = flat_sizes(lambda xx: apply_fn(params, xx), x)
        if method == "lanczos" or (method == "auto" and max(n_in, n_out) > auto_dense_max_dim):
            return None
        return check_dense_fits(n_in, n_out, dtype, memory_budget)  # at trace time: before allocating

    def one(params, x, key):
        fn = lambda xx: apply_fn(params, xx)  # noqa: E731
        # the forward output (XLA shares it with the Jacobian's own forward pass): NaN/Inf
        # there can leave J finite (ReLU' = 0 at NaN), so it is checked on its own
        dense = dense_bytes(params, x) is not None  # sizes first: an empty input fails here
        counts = {"input": _count_nonfinite(x), "output": _count_nonfinite(fn(x))}
        if dense:
            return _dense_spectrum(fn, x, mode, chunk_size, memory_budget), counts
        from isometry import _lanczos  # the matrix-free engine
        if key is None:
            key = jax.random.key(0)
        return _lanczos.lanczos_spectrum(fn, x, key, **lanczos_options), counts

    def core(params, x, key):
        if not batched:
            return one(params, x, key)
        sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(x)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"batched=True needs the same leading batch axis on every input leaf; "
                             f"got leading sizes {sorted(map(str, sizes))}")
        (batch,) = sizes
        if batch == 0:
            raise ValueError("the batch is empty (leading axis of size 0): pass at least one input")
        x0 = jax.tree_util.tree_map(lambda leaf: leaf[0], x)
        keys = None if key is None else jax.random.split(key, batch)
        per_sample = dense_bytes(params, x0)
        if per_sample is not None and per_sample * batch > memory_budget:
            size = max(1, int(memory_budget // per_sample))
            return jax.lax.map(lambda a: one(params, *a), (x, keys), batch_size=size)
        return jax.vmap(one, in_axes=(None, 0, 0 if keys is not None else None))(params, x, keys)

    jitted = jax.jit(core)

    def sfn(params, x, key=None):
        check_floating(x)
        spec, counts = jitted(params, x, _as_key(key))  # size checks run once per shape, while tracing
        _raise_if_nonfinite_values(counts)
        _raise_if_nonfinite(spec)
        return spec

    sfn.jitted = jitted  # exposed for tests of compilation caching
    return sfn


@functools.lru_cache(maxsize=64)
def _cached_spectrum_fn(program, method, batched, mode, chunk_size, memory_budget):
    """One compiled `spectrum_fn` per traced program (`_ClosedProgram`), whatever its constants."""
    return spectrum_fn(program, method, batched=batched, mode=mode, chunk_size=chunk_size,
                       memory_budget=memory_budget)


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


def jacobian_spectrum(fn: Callable, x: Any, *, method: str = "dense", batched: bool = False,
                      mode: str = "auto", chunk_size: int | None = None,
                      memory_budget: float = DEFAULT_MEMORY_BUDGET, key=None) -> Spectrum:
    """Singular values of J = ∂fn(x)/∂x, by a dense Jacobian and its SVD (jit-compiled).

    Args:
      fn: `x -> y`, x and y arrays or pytrees of floating arrays (flattened; J may be
        rectangular).
      x: the input. With `batched=True` the leading axis of every leaf is a batch.
      method, batched, mode, chunk_size, memory_budget: as in `spectrum_fn`.
      key: PRNG key for `method="lanczos"`.

    Returns:
      `Spectrum` with σ descending (leading batch axis kept when batched).

    Example:
      >>> q1, q2 = (jax.random.orthogonal(k, 4) for k in jax.random.split(jax.random.key(0)))
      >>> s = jnp.array([3.0, 2.0, 1.0, 0.5])
      >>> iso.jacobian_spectrum(lambda x: q2 @ (s * (q1 @ x)), jnp.ones(4)).singular_values
      Array([3. , 2. , 1. , 0.5], dtype=float32)

    `fn` is traced at every call, so arrays it closes over are read at their current values
    (never frozen at a first call); calls whose traced program is the same reuse the compiled
    code. For a model whose parameters change, `spectrum_fn(apply_fn)(params, x)` avoids the
    tracing.
    """
    check_floating(x)
    if batched:
        sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(x)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"batched=True needs the same leading batch axis on every input leaf; "
                             f"got leading sizes {sorted(map(str, sizes))}")
        if sizes == {0}:
            raise ValueError("the batch is empty (leading axis of size 0): pass at least one input")
    example = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf)[1:] if batched else jnp.shape(leaf),
                                          jnp.result_type(leaf)), x)
    n_in = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(example))
    if n_in == 0:
        raise ValueError(f"the input is empty (shape {[l.shape for l in jax.tree_util.tree_leaves(x)]}): "
                         f"a Jacobian needs at least one input value")
    program, consts = _ClosedProgram.trace(fn, example)
    sfn = _cached_spectrum_fn(program, method, batched, mode, chunk_size, memory_budget)
    return sfn(consts, x, key)
