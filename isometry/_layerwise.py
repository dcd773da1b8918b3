"""Layer-by-layer spectra: J_l = ∂x_l/∂x_0 for every depth l of a stack, in one forward pass.

A model built as a stack of blocks, x_{l+1} = block_l(x_l) (every model in `models/`), has
one Jacobian per depth,

    J_l = ∂x_l/∂x_0 = D_{l−1} ⋯ D_1 D_0,    D_i = ∂block_i/∂x_i,

and the profile l ↦ chi_l = ‖J_l‖_F²/n_0, l ↦ quantiles of log σ(J_l) shows where along the
depth the signal dies (chi_l → 0) or explodes. A tangent pushed forward through the stack
carries J_l v for every l at once, so:

* `layerwise_spectrum_fn`: all J_l densely from n_0 tangents in one forward-mode pass (the
  Jacobian of the list [x_0, …, x_L] with respect to x_0), then one SVD per depth;
* `layerwise_chi_fn`: chi_l of every depth from a few Rademacher tangents (Hutchinson): one
  pass, JVPs only, for models too large for dense Jacobians.

The engine never imports `models/`: `from_stack` only needs a module with `.blocks` (a list
of callables) and, optionally, `.embed`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from isometry._jacobian import JacobianTooLargeError, check_floating, dense_jacobian, flat_sizes
from isometry._lanczos import hutchinson_chi
from isometry._spectrum import (DEFAULT_MEMORY_BUDGET, _raise_if_nonfinite, check_dense_fits,
                                svd_spectrum)

__all__ = ["from_stack", "layerwise_chi_fn", "layerwise_spectrum_fn"]


def from_stack(module: nnx.Module) -> tuple[Callable, Callable, Any]:
    """`(embed_fn, states_fn, params)` for an NNX module built as a stack of blocks.

    `states_fn(params, x0) = [x_0, block_0(x_0), …]`, the stream after every block, and
    `embed_fn(params, x) = module.embed(x)` gives x_0 from an input (the identity when the
    module has no `embed`). Any module with a `.blocks` list works (`models.Stack` does).

    Example:
      >>> embed_fn, states_fn, params = iso.from_stack(
      ...     models.FullyConnected(8, 64, rngs=nnx.Rngs(0)))
      >>> chi = iso.layerwise_chi_fn(states_fn)(params, embed_fn(params, x), key)[0]
    """
    if not hasattr(module, "blocks"):
        raise TypeError(f"{type(module).__name__} has no `blocks`: layer-by-layer spectra need a "
                        f"model built as a stack of blocks (e.g. a subclass of models.Stack)")
    graphdef, params = nnx.split(module)

    def embed_fn(params, x):
        model = nnx.merge(graphdef, params)
        return model.embed(x) if hasattr(model, "embed") else x

    def states_fn(params, x0):
        xs = [x0]
        for block in nnx.merge(graphdef, params).blocks:
            xs.append(block(xs[-1]))
        return xs

    return embed_fn, states_fn, params


def _vmapped(fn: Callable, batched: bool, n_args: int) -> Callable:
    if not batched:
        return fn
    return jax.vmap(fn, in_axes=(None,) + (0,) * (n_args - 1))


def layerwise_spectrum_fn(states_fn: Callable, *, batched: bool = False,
                          chunk_size: int | None = None,
                          memory_budget: float = DEFAULT_MEMORY_BUDGET) -> Callable:
    """A jitted `(params, x0) -> [Spectrum of J_0, …, Spectrum of J_L]`, J_l = ∂x_l/∂x_0.

    One forward-mode pass with the n_0 basis tangents gives every J_l at once (the tangent of
    the whole list of states); each J_l then gets its own SVD. Memory: n_0 × Σ_l n_l entries.

    Args:
      states_fn: `(params, x0) -> [x_0, …, x_L]` (see `from_stack`); states may differ in shape.
      batched: the leading axis of x0 is a batch (each Spectrum keeps it).
      chunk_size: at most this many tangents at once (bounds activation memory).
      memory_budget: bytes the stacked Jacobians and their SVDs may take; above it a
        `JacobianTooLargeError` points to `layerwise_chi_fn`.

    Returns:
      `lfn(params, x0)` returning a list of L+1 `Spectrum`s (J_0 = I first). Outside a trace
      it raises FloatingPointError when a J_l has NaN/Inf entries.
    """

    def one(params, x0):
        fn = lambda x: states_fn(params, x)  # noqa: E731
        n_in, _, _ = flat_sizes(fn, x0)
        jt = dense_jacobian(fn, x0, mode="fwd", chunk_size=chunk_size, transposed_ok=True)
        sizes = [math.prod(jnp.shape(s)) for s in jax.eval_shape(fn, x0)]
        spectra, start = [], 0
        for n_out in sizes:
            spectra.append(svd_spectrum(jt[:, start:start + n_out], n_in, n_out))
            start += n_out
        return spectra

    jitted = jax.jit(_vmapped(one, batched, 2))

    def lfn(params, x0):
        check_floating(x0)
        sample = jax.tree_util.tree_map(lambda a: a[0], x0) if batched else x0
        n_in, n_total, dtype = flat_sizes(lambda x: states_fn(params, x), sample)
        try:
            check_dense_fits(n_in, n_total, dtype, memory_budget)
        except JacobianTooLargeError as err:
            raise JacobianTooLargeError(
                f"layer-by-layer: all {n_total} state entries x {n_in} inputs: {err}; or use "
                f"layerwise_chi_fn (chi_l from a few JVPs)") from None
        spectra = jitted(params, x0)
        for spec in spectra:
            _raise_if_nonfinite(spec)
        return spectra

    lfn.jitted = jitted
    return lfn


def layerwise_chi_fn(states_fn: Callable, *, num_probes: int = 16,
                     batched: bool = False) -> Callable:
    """A jitted `(params, x0, key) -> (chi, stderr)`, each of shape (..., L+1): chi_l of J_l.

    chi_l = ‖∂x_l/∂x_0‖_F²/n_0 by Hutchinson: `num_probes` Rademacher tangents pushed
    through the stack once (JVPs only), so the cost is about num_probes forward passes
    whatever the depth and width.

    Args:
      states_fn: `(params, x0) -> [x_0, …, x_L]` (see `from_stack`).
      num_probes: Rademacher tangents (relative error ~ √(2/(num_probes·n_0)) near isometry).
      batched: the leading axis of x0 is a batch (one key per input is split from `key`).

    Returns:
      `cfn(params, x0, key)`: (chi, stderr) stacked over depth (last axis).
    """

    def one(params, x0, key):
        chi, err = hutchinson_chi(lambda x: states_fn(params, x), x0, key, num_probes)
        return jnp.stack(chi, axis=-1), jnp.stack(err, axis=-1)

    def core(params, x0, key):
        if not batched:
            return one(params, x0, key)
        n = jax.tree_util.tree_leaves(x0)[0].shape[0]
        return jax.vmap(one, in_axes=(None, 0, 0))(params, x0, jax.random.split(key, n))

    jitted = jax.jit(core)

    def cfn(params, x0, key):
        check_floating(x0)
        return jitted(params, x0, key)

    return cfn
