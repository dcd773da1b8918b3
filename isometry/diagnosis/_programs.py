"""Pure functions `diagnose` and `tune_init` compile: a module's graph as functions, gradients.

Each cache holds one object per (graph, setting), so compilations are reused across seeds and
scales of the same architecture.

Example:
    >>> f = cached_jit(jnp.sin)
    >>> f is cached_jit(jnp.sin), float(f(0.0))
    (True, 0.0)
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from isometry.linalg._lapack import lapack_safe
from isometry.spectrum._layerwise import layerwise_chi_fn, layerwise_spectrum_fn, state_runs
from isometry.spectrum._engine import Dense
from isometry.spectrum._function import spectrum_fn
from isometry._stack import LAYER_AXIS_KEY
from isometry._adapters import graph_fn
from isometry._params import path_names

__all__ = ["module_fns", "cached_jit", "float_grad", "group_norms", "layerwise_fns",
           "dense_spectrum_fn", "last_state_fn"]


def group_norms(grads) -> dict[str, float]:
    """‖gradient‖ per layer: stacked leaves (a `layers` key) one entry per layer index, others
    grouped by their path up to the first integer key (or their first key)."""
    sq: dict[str, float] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if g is None or not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
            continue
        names = path_names(path)
        g = np.asarray(g, np.float64)
        if LAYER_AXIS_KEY in names and g.ndim >= 1:
            at = names.index(LAYER_AXIS_KEY)
            per = np.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
            for i, v in enumerate(per):
                key = "/".join(names[:at] + [str(i)])
                sq[key] = sq.get(key, 0.0) + float(v)
            continue
        cut = next((i for i, n in enumerate(names) if n.isdigit()), 0)
        key = "/".join(names[:cut + 1]) if names else "params"
        sq[key] = sq.get(key, 0.0) + float(np.sum(g ** 2))
    return {k: math.sqrt(v) for k, v in sq.items()}


def _default_loss(out, target):
    """½·mean (y − t)² summed over output leaves."""
    diff = jax.tree.map(lambda a, t: jnp.mean(jnp.square(a - t)), out, target)
    return 0.5 * sum(jax.tree.leaves(diff))


@functools.lru_cache(maxsize=32)
def _grad_fn(apply_fn: Callable, loss_fn: Callable | None, treedef, idx: tuple) -> Callable:
    """Jitted (floating leaves, other leaves, x, target) -> (output, gradients)."""

    def f(floats, others, x, target):
        full = list(others)
        for i, a in zip(idx, floats):
            full[i] = a
        out = apply_fn(jax.tree_util.tree_unflatten(treedef, full), x)
        value = _default_loss(out, target) if loss_fn is None else loss_fn(out)
        return value, out

    return jax.jit(jax.value_and_grad(f, has_aux=True))


def float_grad(apply_fn: Callable, loss_fn, params, x, target) -> tuple:
    """(output, ∂loss/∂params) with gradients of the floating leaves of params (None
    elsewhere); compiled once per (apply_fn, loss_fn, parameter structure)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    idx = tuple(i for i, a in enumerate(leaves)
                if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact))
    others = [None if i in idx else a for i, a in enumerate(leaves)]
    fn = _grad_fn(apply_fn, loss_fn, treedef, idx)
    (_, out), g = fn([leaves[i] for i in idx], others, x, target)
    full = [None] * len(leaves)
    for i, a in zip(idx, g):
        full[i] = a
    return out, jax.tree_util.tree_unflatten(treedef, full)


@functools.lru_cache(maxsize=32)
def module_fns(graphdef) -> dict:
    """Pure functions of a module's graph, one object per graph (so their compilations are
    reused across seeds and scales of the same architecture): "apply" (the module's call),
    "embed", "stack", "states" and "attention" (`attention_weights`)."""
    methods = dict(apply=None, embed="embed", stack="stack", states="states",
                   attention="attention_weights")
    return {name: graph_fn(graphdef, method) for name, method in methods.items()}


@functools.lru_cache(maxsize=32)
def cached_jit(fn: Callable) -> Callable:
    """`jax.jit(lapack_safe(fn))`, one object per function (its compilations are kept)."""
    return jax.jit(lapack_safe(fn))


@functools.lru_cache(maxsize=32)
def layerwise_fns(states_fn: Callable, memory_budget: float | None, num_probes: int) -> dict:
    """{"spectrum": dense spectra of every ∂x_l/∂x_0, "chi": Hutchinson χ_l} of a stack."""
    return dict(spectrum=layerwise_spectrum_fn(states_fn, memory_budget=memory_budget),
                chi=layerwise_chi_fn(states_fn, num_probes=num_probes))


@functools.lru_cache(maxsize=32)
def dense_spectrum_fn(fn: Callable, engine: Dense) -> Callable:
    """The dense `spectrum_fn` of `fn`, one object per (function, engine settings)."""
    return spectrum_fn(fn, engine=engine)


@functools.lru_cache(maxsize=32)
def last_state_fn(states_fn: Callable) -> Callable:
    """(params, x0) ↦ x_L, the top of the last run of `states_fn`."""
    return lambda p, xx: state_runs(states_fn(p, xx))[-1][-1]

