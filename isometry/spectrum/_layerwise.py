"""Layer-by-layer spectra: J_l = ∂x_l/∂x_0 for every depth l of a stack, in one forward pass.

A model built as a stack of blocks, x_{l+1} = block_l(x_l) (every model in `models/`, any
`isometry.LayerStack`), has one Jacobian per depth,

    J_l = ∂x_l/∂x_0 = D_{l−1} ⋯ D_1 D_0,    D_i = ∂block_i/∂x_i,

and the profile l ↦ chi_l = ‖J_l‖_F²/n_0, l ↦ quantiles of log σ(J_l) shows where along the
depth the signal dies (chi_l → 0) or explodes. The stack's `states` are x_0 … x_L stacked on a
depth axis by the model's own scan, so a tangent pushed through it carries J_l v for every l at
once:

* `layerwise_spectrum_fn`: every J_l densely from n_0 tangents in one forward-mode pass, then
  one SVD per depth, vmapped over the depth axis: one `Spectrum` with a depth axis;
* `layerwise_chi_fn`: chi_l of every depth from a few Rademacher tangents (Hutchinson): one
  pass, JVPs only, for models too large for dense Jacobians.

The program's size does not depend on the depth (the scan, the vmapped SVD).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from isometry.linalg._jacobian import JacobianTooLargeError, check_floating, dense_jacobian, flat_sizes
from isometry.linalg._memory import memory_budget_of
from isometry._numerics import check_setting, log10_sigma, tiny
from isometry.spectrum._program import CompiledFunction
from isometry.spectrum._protocol import raise_if_nonfinite
from isometry.spectrum._function import Spectrum, check_dense_fits, svd_spectrum
from isometry._stack import LayerStack
from isometry._adapters import graph_fn

__all__ = ["from_stack", "layerwise_chi_fn", "layerwise_spectrum_fn", "depth_profile", "state_runs"]


def from_stack(module: nnx.Module) -> tuple[Callable, Callable, Any]:
    """`(embed_fn, states_fn, params)` for an NNX module that follows `LayerStack`.

    `states_fn(params, x0) = module.states(x0)`, the stream x_0 … x_L stacked on a leading
    depth axis (a tuple of such stacks where blocks change the shape), and
    `embed_fn(params, x) = module.embed(x)` gives x_0 from an input.

    Example:
      >>> import jax, models, isometry as iso
      >>> from flax import nnx
      >>> net = models.FullyConnected(8, 64, rngs=nnx.Rngs(0))
      >>> embed_fn, states_fn, params = iso.from_stack(net)
      >>> x = jax.random.normal(jax.random.key(1), (64,))
      >>> states_fn(params, embed_fn(params, x)).shape   # x_0 ... x_8
      (9, 64)
    """
    if not isinstance(module, LayerStack):
        raise TypeError(f"{type(module).__name__} does not follow isometry.LayerStack (embed, "
                        f"stack, states, head): layer-by-layer spectra need the stream at every "
                        f"depth, e.g. a subclass of models.Stack")
    graphdef, params = nnx.split(module)
    return graph_fn(graphdef, "embed"), graph_fn(graphdef, "states"), params


def _vmapped(fn: Callable, batched: bool, n_args: int) -> Callable:
    if not batched:
        return fn
    return jax.vmap(fn, in_axes=(None,) + (0,) * (n_args - 1))


def state_runs(states) -> tuple:
    """The depth-stacked runs of a `states` result, as a tuple (one array: a 1-tuple)."""
    return tuple(states) if isinstance(states, (tuple, list)) else (states,)


def _one_or_tuple(items: list):
    return items[0] if len(items) == 1 else tuple(items)


def layerwise_spectrum_fn(states_fn: Callable, *, batched: bool = False,
                          chunk_size: int | None = None,
                          memory_budget: float | None = None) -> Callable:
    """A jitted `(params, x0) -> Spectrum` of every J_l = ∂x_l/∂x_0, with a depth axis.

    One forward-mode pass with the n_0 basis tangents gives every J_l at once (the tangent of
    the stacked states); the SVD is vmapped over the depth axis. Memory: n_0 × Σ_l n_l entries.

    Args:
      states_fn: `(params, x0) -> states` stacked on a leading depth axis (see `from_stack`).
      batched: the leading axis of x0 is a batch (each Spectrum keeps it, before the depth axis).
      chunk_size: at most this many tangents at once (bounds activation memory).
      memory_budget: bytes the stacked Jacobians and their SVDs may take (None: the default
        budget); above it a `JacobianTooLargeError` points to `layerwise_chi_fn`.

    Returns:
      `lfn(params, x0)` returning a `Spectrum` whose fields have shape (…, L+1, k) (J_0 = I
      first) — a tuple of them, one per run, when the blocks change the shape. Outside a trace
      it raises FloatingPointError when a J_l has NaN/Inf entries. A `CompiledFunction`:
      `lfn.program` is the jitted core `(params, x0) -> spectra` without the checks,
      `lfn.trace_count` and `lfn.compile(params, x0)` as for `spectrum_fn`.
    """

    check_setting("chunk_size", chunk_size, low=1, integer=True, optional=True)
    memory_budget_of(memory_budget)  # a bad budget fails here, not at the first call

    def one(params, x0):
        fn = lambda x: states_fn(params, x)  # noqa: E731
        n_in, _, _ = flat_sizes(fn, x0)
        jt = dense_jacobian(fn, x0, mode="fwd", chunk_size=chunk_size, transposed_ok=True,
                            memory_budget=memory_budget)
        spectra, start = [], 0
        for run in state_runs(jax.eval_shape(fn, x0)):
            depth, n_out = run.shape[0], math.prod(run.shape[1:])
            block = jt[:, start:start + depth * n_out].reshape(n_in, depth, n_out)
            spectra.append(jax.vmap(lambda j: svd_spectrum(j, n_in, n_out), in_axes=1)(block))
            start += depth * n_out
        return _one_or_tuple(spectra)

    def check(params, x0):
        check_floating(x0)
        sample = jax.tree_util.tree_map(lambda a: a[0], x0) if batched else x0
        n_in, n_total, dtype = flat_sizes(lambda x: states_fn(params, x), sample)
        try:
            check_dense_fits(n_in, n_total, dtype, memory_budget)
        except JacobianTooLargeError as err:
            raise JacobianTooLargeError(
                f"layer-by-layer: all {n_total} state entries x {n_in} inputs: {err}; or use "
                f"layerwise_chi_fn (chi_l from a few JVPs)") from None

    def finish(spectra):
        for spec in state_runs(spectra):
            raise_if_nonfinite(spec)
        return spectra

    return CompiledFunction(_vmapped(one, batched, 2), check, finish)


def layerwise_chi_fn(states_fn: Callable, *, num_probes: int = 16,
                     batched: bool = False) -> Callable:
    """A jitted `(params, x0, key=None) -> (chi, stderr)`, each (..., L+1): chi_l of J_l.

    chi_l = ‖∂x_l/∂x_0‖_F²/n_0 = E‖J_l r‖²/n_0 for Rademacher r (Hutchinson): `num_probes`
    tangents pushed through the stack once (JVPs only), so the cost is about num_probes
    forward passes whatever the depth and width.

    Args:
      states_fn: `(params, x0) -> states` stacked on a leading depth axis (see `from_stack`).
      num_probes: Rademacher tangents (≥ 2; relative error ~ √(2/(num_probes·n_0)) near
        isometry).
      batched: the leading axis of x0 is a batch (one key per input is split from `key`).

    Returns:
      `cfn(params, x0, key=None)` (None: PRNGKey(0)): (chi, stderr) with the depth as the last axis (the runs of a
      shape-changing stack joined in depth order); a `CompiledFunction` (`.program`,
      `.trace_count`, `.compile()`).
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be at least 2 (for a standard error), got {num_probes}")

    def one(params, x0, key):
        x_flat, unravel = ravel_pytree(x0)
        probes = jax.random.rademacher(key, (num_probes, x_flat.size), dtype=x_flat.dtype)
        push = lambda r: jax.jvp(lambda x: states_fn(params, x), (x0,), (unravel(r),))[1]  # noqa: E731
        runs = state_runs(jax.vmap(push)(probes))
        # ‖J_l r_p‖² for every probe p and depth l: shape (num_probes, L+1)
        sq = jnp.concatenate([jnp.sum(jnp.square(t.reshape(*t.shape[:2], -1)), axis=-1)
                              for t in runs], axis=1)
        chi = jnp.mean(sq, axis=0) / x_flat.size
        err = jnp.std(sq, axis=0, ddof=1) / (math.sqrt(num_probes) * x_flat.size)
        return chi, err

    def core(params, x0, key=None):
        key = jax.random.key(0) if key is None else key
        if not batched:
            return one(params, x0, key)
        n = jax.tree_util.tree_leaves(x0)[0].shape[0]
        return jax.vmap(one, in_axes=(None, 0, 0))(params, x0, jax.random.split(key, n))

    return CompiledFunction(core, lambda params, x0, key=None: check_floating(x0))


def depth_profile(profile, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict:
    """chi_l and quantiles of log10 σ(J_l) against depth, pooled over batch axes (numpy).

    Args:
      profile: what `layerwise_spectrum_fn` returns (a `Spectrum` with a depth axis, or a
        tuple of them), or a chi array from `layerwise_chi_fn` (depth last).
      quantiles: the quantiles of log10 σ to report (spectra only).

    Returns:
      {"chi": array (L+1,)} and, for spectra, {"log10_sigma_quantiles": array
      (len(quantiles), L+1)}; σ = 0 counts as the dtype's smallest normal number.
    """
    if not isinstance(profile, (Spectrum, tuple, list)):
        chi = np.asarray(profile, np.float64)
        return {"chi": chi.reshape(-1, chi.shape[-1]).mean(axis=0)}
    chis, qs = [], []
    for spec in state_runs(profile):
        s = np.asarray(spec.singular_values, np.float64)
        depth = s.shape[-2]
        chis.append(np.asarray(spec.chi, np.float64).reshape(-1, depth).mean(axis=0))
        pooled = np.moveaxis(s, -2, 0).reshape(depth, -1)
        # σ = 0 at the smallest normal number of σ's own dtype (float64 only for the log)
        log10 = log10_sigma(np.maximum(pooled, tiny(np.asarray(spec.singular_values))))
        qs.append(np.quantile(log10, quantiles, axis=1))
    return {"chi": np.concatenate(chis), "log10_sigma_quantiles": np.concatenate(qs, axis=1)}
