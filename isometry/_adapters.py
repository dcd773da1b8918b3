"""Turning models into pure `apply_fn(params, x)` functions.

Every engine function takes a pure `apply_fn(params, x) -> y` and a `params` pytree, so the
same compiled code serves any parameter values. These adapters produce that pair from a Flax
NNX module or a Linen module with its variables; a plain function `x -> y` needs no adapter
(`jacobian_spectrum(fn, x)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import flax
from flax import nnx
from flax.errors import TraceContextError

__all__ = ["from_nnx", "from_linen", "graph_fn"]


def from_nnx(module: nnx.Module) -> tuple[Callable, Any]:
    """`(apply_fn, params)` for an NNX module: `apply_fn(params, x) = module(x)`.

    `params` is the module's whole `nnx.State` (parameters, BatchNorm statistics, RNG state):
    the Jacobian is taken at the module's current mode (call `module.eval()` first for
    BatchNorm statistics and no dropout). The module itself is not mutated by `apply_fn`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn, params = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> apply_fn(params, jnp.ones(3)).shape
      (2,)
      >>> jax.jacfwd(apply_fn, argnums=1)(params, jnp.ones(3)).shape  # what the engine takes
      (2, 3)
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx takes a flax.nnx.Module, got {type(module).__name__}; for a "
                        f"Linen module use iso.from_linen(module, variables), for a plain "
                        f"function x -> y pass it to iso.jacobian_spectrum directly")
    graphdef, state = nnx.split(module)
    return graph_fn(graphdef), state


def graph_fn(graphdef, method: str | None = None, *, with_state=None) -> Callable:
    """The pure function of an NNX graph: `fn(params, *args) = nnx.merge(graphdef, params)(*args)`,
    or the module's `method` (e.g. "embed", "states", "stack") when given.

    This is the one place the library turns an `nnx.split` graph back into a function of its
    state (`from_nnx`, `from_stack`, the diagnosis' and the tracker's programs, BatchNorm
    calibration): each call merges a fresh module, so the module `nnx.split` came from is
    never mutated. With `with_state` (an nnx filter, e.g. `nnx.BatchStat`) `fn` returns
    `(output, nnx.state(module, with_state))`, the variables the call left in the module.
    A call that updates the module's own state under a JAX transform (BatchNorm statistics
    or Dropout in training mode, inside a Jacobian) raises ValueError: call `module.eval()`.

    Example:
      >>> import jax.numpy as jnp
      >>> graphdef, params = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> graph_fn(graphdef)(params, jnp.ones(3)).shape
      (2,)
    """

    def fn(params, *args):
        module = nnx.merge(graphdef, params)
        try:
            out = (module if method is None else getattr(module, method))(*args)
        except TraceContextError:
            raise ValueError(
                f"the {type(module).__name__} updates its own state when called (BatchNorm "
                f"statistics or Dropout in training mode), which a Jacobian cannot trace: call "
                f"module.eval() first (before iso.from_nnx(module))") from None
        return out if with_state is None else (out, nnx.state(module, with_state))

    return fn


def from_linen(module, variables: Any, **apply_kwargs) -> tuple[Callable, Any]:
    """`(apply_fn, params)` for a Linen module: `apply_fn(params, x) = module.apply(params, x)`.

    Args:
      module: a `flax.linen.Module`.
      variables: its variables, as returned by `module.init` (all collections).
      **apply_kwargs: fixed keyword arguments for `module.apply` (e.g. `train=False`). With
        `mutable=[...]` Linen returns `(y, updated_variables)`: the Jacobian is that of y
        only (the updates are dropped).
    """
    mutable = apply_kwargs.get("mutable", False)
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be the dict module.init(key, x) returns, got "
                        f"{type(variables).__name__}")

    def apply_fn(params, x):
        try:
            out = module.apply(params, x, **apply_kwargs)
        except flax.errors.ScopeCollectionNotFound as err:
            raise ValueError(f"the variables given to from_linen lack a collection that "
                             f"{type(module).__name__} reads ({str(err).split(' (https')[0]}; got "
                             f"collections {sorted(params)}): pass what module.init(key, x) "
                             f"returns, all of it") from None
        if mutable is not False:  # (y, new_variables): differentiate the output only
            out = out[0]
        return out

    return apply_fn, variables
