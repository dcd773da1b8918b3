"""Input-output Jacobians: dense matrices and the matrix-free operator.

For y = f(x) with x, y arrays or pytrees, both are flattened (`ravel_pytree`) to vectors of
sizes n_in and n_out, and J = ∂y/∂x is the n_out × n_in matrix between them.

Dense: forward mode builds J column by column (n_in Jacobian-vector products after one
`jax.linearize`), reverse mode row by row (n_out vector-Jacobian products); "auto" picks the
smaller count. The products are vmapped, or mapped in chunks with `jax.lax.map(batch_size=…)`
when asked. Matrix-free: `jacobian_operator` returns v ↦ Jv and u ↦ Jᵀu from
`jax.linearize` and `jax.linear_transpose`, each costing about one forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from isometry._numerics import check_setting
from isometry.linalg._memory import (DEFAULT_MEMORY_BUDGET, JacobianTooLargeError,
                                     ProgramTooLargeError, check_fits, check_program_fits,
                                     free_device_memory, gib, memory_budget_of)

__all__ = [
    "JacobianTooLargeError",
    "ProgramTooLargeError",
    "check_program_fits",
    "free_device_memory",
    "batch_size",
    "dense_jacobian",
    "jacobian_operator",
    "JacobianOperator",
    "check_floating",
    "flat_sizes",
    "DEFAULT_MEMORY_BUDGET",
]

MODES = ("auto", "fwd", "rev")


def check_floating(x: Any, what: str = "input") -> None:
    """Raises TypeError unless every leaf of `x` is a floating-point array."""
    leaves = jax.tree_util.tree_leaves_with_path(x)
    if not leaves:
        raise ValueError(f"the {what} has no array leaves; pass an array or a pytree of arrays")
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "(the array)"
            raise TypeError(
                f"the {what} leaf {where} has dtype {dtype}; Jacobians are taken with respect to "
                f"floating-point values: cast it, e.g. x.astype(jnp.float32) (or float64 with "
                f"jax_enable_x64), or close over integer arguments such as token ids")


def _flatten(fn: Callable, x: Any):
    """Returns (f_flat, x_flat, n_in, n_out): f_flat maps the flat input to the flat output."""
    x_flat, unravel = ravel_pytree(x)

    def f_flat(v):
        return ravel_pytree(fn(unravel(v)))[0]

    out = output_shape(fn, x)
    n_out = sum(math.prod(o.shape) for o in jax.tree_util.tree_leaves(out))
    return f_flat, x_flat, x_flat.size, n_out


def describe_shapes(x: Any) -> str:
    leaves = jax.tree_util.tree_leaves(x)
    text = ", ".join(f"{jnp.result_type(l).name}{list(jnp.shape(l))}" for l in leaves)
    return text if len(leaves) == 1 else f"({text})"


def output_shape(fn: Callable, x: Any):
    """`jax.eval_shape(fn, x)`, floating; a model that cannot take `x` (a shape or dtype it
    does not expect) raises ValueError naming the input's shape, not a raw XLA message."""
    try:
        out = jax.eval_shape(fn, x)
    except TypeError as err:  # dot_general / conv / broadcasting shape errors are TypeErrors
        raise ValueError(f"the model does not take an input {describe_shapes(x)}: "
                         f"{str(err).splitlines()[0]} (check the input's shape: one example, "
                         f"or a batch with batched=True)") from err
    check_floating(out, what="output")
    return out


def check_nonempty(n_in: int, n_out: int) -> None:
    """Raises ValueError when J would have no rows or no columns (an empty input or output)."""
    if n_in == 0 or n_out == 0:
        which = "input" if n_in == 0 else "output"
        raise ValueError(f"the {which} is empty (n_in = {n_in}, n_out = {n_out}): a Jacobian "
                         f"needs at least one input and one output value")


def batch_size(x: Any, needs: str = "batched=True") -> int:
    """The leading batch axis shared by every leaf of x; ValueError if they differ or it is 0
    (`needs`: what takes the batch, named in the error: `batched=True`, a sharded spectrum).

    Example:
      >>> import jax.numpy as jnp
      >>> batch_size({"a": jnp.ones((3, 2)), "b": jnp.ones(3)})
      3
    """
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(x)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{needs} needs the same leading batch axis on every input leaf; "
                         f"got leading sizes {sorted(map(str, sizes))}")
    (batch,) = sizes
    if batch == 0:
        raise ValueError("the batch is empty (leading axis of size 0): pass at least one input")
    return batch


def flat_sizes(fn: Callable, x: Any) -> tuple[int, int, jnp.dtype]:
    """(n_in, n_out, dtype) of the flattened Jacobian of `fn` at `x`, without computing it.

    Raises ValueError for an empty input or output.
    """
    check_floating(x)
    n_in = sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(x))
    check_nonempty(n_in, 1)
    out = output_shape(fn, x)
    n_out = sum(math.prod(o.shape) for o in jax.tree_util.tree_leaves(out))
    check_nonempty(n_in, n_out)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(x), *jax.tree_util.tree_leaves(out))
    return n_in, n_out, dtype


def resolve_mode(mode: str, n_in: int, n_out: int) -> str:
    """"fwd" when there are no more inputs than outputs, else "rev" (unless forced)."""
    if mode not in MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}; use one of {MODES}")
    if mode == "auto":
        return "fwd" if n_in <= n_out else "rev"
    return mode


def _map_basis(fn: Callable, basis: jax.Array, chunk_size: int | None) -> jax.Array:
    """fn applied to every row of `basis`: vmapped, or in chunks of `chunk_size` rows."""
    if chunk_size is None or chunk_size >= basis.shape[0]:
        return jax.vmap(fn)(basis)
    return jax.lax.map(fn, basis, batch_size=chunk_size)


def check_jacobian_fits(n_in: int, n_out: int, dtype, mode: str, memory_budget: float) -> int:
    """Bytes of a dense J and its basis of unit vectors; `JacobianTooLargeError` above budget.

    Runs on shapes only (at trace time), so nothing is allocated when it raises.
    """
    itemsize = jnp.dtype(dtype).itemsize
    basis = n_in if mode == "fwd" else n_out
    j_bytes = n_in * n_out * itemsize
    return check_fits(
        j_bytes + basis * basis * itemsize, memory_budget,
        f"the dense Jacobian ({gib(j_bytes)}: {n_out} outputs x {n_in} inputs x "
        f"{jnp.dtype(dtype).name}) with its basis",
        "use a matrix-free method (isometry.spectrum_fn(..., engine=isometry.lanczos()), "
        "isometry.jacobian_operator) or raise memory_budget")


def dense_jacobian(fn: Callable, x: Any, mode: str = "auto", chunk_size: int | None = None,
                   transposed_ok: bool = False,
                   memory_budget: float | None = None) -> jax.Array:
    """The dense Jacobian J = ∂ravel(fn(x))/∂ravel(x), shape (n_out, n_in).

    Args:
      fn: function of one argument (array or pytree) returning an array or pytree.
      x: the point at which to differentiate.
      mode: "fwd" (n_in JVPs), "rev" (n_out VJPs) or "auto" (the fewer products).
      chunk_size: compute at most this many products at once (`jax.lax.map`), to bound the
        memory of the intermediate activations; None computes all at once.
      transposed_ok: return Jᵀ instead of J when that saves a transpose (the singular values
        are the same).
      memory_budget: bytes J and its basis of unit vectors may take (None: the default of
        `isometry.linalg.memory_budget_of`); above it `JacobianTooLargeError` is raised before
        anything is allocated (at trace time).

    Returns:
      J (or Jᵀ when `transposed_ok` and forward mode was used).
    """
    check_floating(x)
    check_setting("chunk_size", chunk_size, low=1, integer=True, optional=True)
    f_flat, x_flat, n_in, n_out = _flatten(fn, x)
    check_nonempty(n_in, n_out)
    mode = resolve_mode(mode, n_in, n_out)
    check_jacobian_fits(n_in, n_out, x_flat.dtype, mode, memory_budget_of(memory_budget))
    if mode == "fwd":
        _, jvp = jax.linearize(f_flat, x_flat)
        jt = _map_basis(jvp, jnp.eye(n_in, dtype=x_flat.dtype), chunk_size)  # rows: J e_i
        return jt if transposed_ok else jt.T
    y, vjp = jax.vjp(f_flat, x_flat)
    return _map_basis(lambda u: vjp(u)[0], jnp.eye(n_out, dtype=y.dtype), chunk_size)


@dataclasses.dataclass(frozen=True)
class JacobianOperator:
    """J as a matrix-free linear operator on flat vectors.

    Attributes:
      matvec: v (n_in,) ↦ J v (n_out,).
      rmatvec: u (n_out,) ↦ Jᵀ u (n_in,).
      n_in: number of inputs.
      n_out: number of outputs.
      dtype: dtype of the flat vectors.
    """

    matvec: Callable[[jax.Array], jax.Array]
    rmatvec: Callable[[jax.Array], jax.Array]
    n_in: int
    n_out: int
    dtype: Any


def jacobian_operator(fn: Callable, x: Any) -> JacobianOperator:
    """J = ∂ravel(fn(x))/∂ravel(x) as products only: one forward pass, then ~one pass each.

    v ↦ Jv comes from `jax.linearize`, u ↦ Jᵀu from `jax.linear_transpose` of that
    linearization, so the forward pass is not repeated for each product.
    """
    check_floating(x)
    f_flat, x_flat, n_in, n_out = _flatten(fn, x)
    _, jvp = jax.linearize(f_flat, x_flat)
    transpose = jax.linear_transpose(jvp, x_flat)
    return JacobianOperator(jvp, lambda u: transpose(u)[0], n_in, n_out, x_flat.dtype)
