"""LAPACK calls one matrix at a time on the CPU: batched calls can deadlock there.

Why: jaxlib's CPU LAPACK kernels (SVD, eigh) split a *batch* of matrices into tasks on XLA's
intra-op thread pool (`jax::ParallelBatchMap`) and block the calling thread, itself a pool
thread, until the tasks are done. That pool has max(#cores, #devices) threads. Whenever as
many batched calls run at once as the pool has threads, every thread waits for tasks that no
thread is left to run, and the program hangs for good with the CPU idle (gdb: every
`tf_XLAEigen` thread in `lapack_sgesdd_ffi` -> `ParallelBatchMap` -> `BlockingCounter::Wait`).
It takes little to get there: with one device on a machine of two cores, the two
independent batched SVDs of a matrix-free spectrum over several probes (the projected
bidiagonals and the restart blocks, which XLA's thunk executor runs concurrently) are enough;
on a simulated multi-device CPU, devices that leave a collective together and enter a
batched SVD at once. A single matrix (batch of one) runs
inline on the calling thread and never waits on the pool.

`lapack_safe(fn)` is what every compiled program of the library goes through: on the CPU it
is `unbatch_lapack(fn)`, elsewhere `fn` (GPUs and TPUs keep their batched solvers). One
matrix at a time costs little on the CPU: each matrix runs the same LAPACK routine, and only
the overlap of small matrices in a batch is lost.

`unbatch_lapack(fn)` therefore rewrites the traced program of `fn`: every SVD/eigh
equation whose operand has batch axes (from `vmap`, `lax.map(batch_size=...)` or a stack of
matrices) becomes a `lax.map` over single matrices; nested jits are inlined, loop and branch
bodies rewritten. The arithmetic per matrix is unchanged (same LAPACK routine), so results
are bit-identical. `batched_lapack_calls(hlo)` lists the LAPACK custom calls of compiled HLO
that still take a batch (the tests check that none are left).
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import jax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

__all__ = ["LAPACK_PRIMITIVES", "batched_lapack_calls", "lapack_safe", "unbatch_lapack"]

#: Primitives lowered to jaxlib's batched CPU LAPACK kernels.
LAPACK_PRIMITIVES = (jax.lax.linalg.svd_p, jax.lax.linalg.eigh_p)
_INLINED = ("pjit", "jit", "closed_call", "core_call")


def _batched(eqn) -> bool:
    return eqn.primitive in LAPACK_PRIMITIVES and eqn.invars[0].aval.ndim > 2


def _inner(value):
    """The jaxprs held by one equation parameter (a jaxpr, or a tuple of them)."""
    items = value if isinstance(value, tuple) else (value,)
    return [v.jaxpr if isinstance(v, ClosedJaxpr) else v for v in items
            if isinstance(v, (ClosedJaxpr, Jaxpr))]


def _needs_rewrite(jaxpr: Jaxpr) -> bool:
    return any(_needs_rewrite_eqn(eqn) for eqn in jaxpr.eqns)


def _needs_rewrite_eqn(eqn) -> bool:
    return _batched(eqn) or any(_needs_rewrite(j) for v in eqn.params.values() for j in _inner(v))


def _sequential(primitive, params, x):
    """`primitive` of a stack of matrices x (..., m, n), one matrix at a time."""
    batch = x.shape[:-2]
    outs = jax.lax.map(lambda m: primitive.bind(m, **params), x.reshape((-1,) + x.shape[-2:]))
    if not primitive.multiple_results:
        return outs.reshape(batch + outs.shape[1:])
    return [o.reshape(batch + o.shape[1:]) for o in outs]


def _rewrite_param(value):
    if isinstance(value, tuple):
        return tuple(_rewrite_param(v) for v in value)
    if isinstance(value, ClosedJaxpr) and _needs_rewrite(value.jaxpr):
        return _retrace(value.jaxpr, value.consts)
    if isinstance(value, Jaxpr) and _needs_rewrite(value):
        closed = _retrace(value, [])
        if closed.consts:
            raise NotImplementedError("unbatch_lapack: a rewritten open jaxpr gained constants")
        return closed.jaxpr
    return value


def _retrace(jaxpr: Jaxpr, consts) -> ClosedJaxpr:
    """`jaxpr` traced again through `_evaluate` (same input and output types)."""
    specs = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
             for v in jaxpr.invars]
    return jax.make_jaxpr(lambda *args: _evaluate(jaxpr, consts, *args))(*specs)


def _evaluate(jaxpr: Jaxpr, consts, *args) -> list:
    """`jax.core.eval_jaxpr`, with batched LAPACK equations made sequential."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        rewrite = _needs_rewrite_eqn(eqn)
        if _batched(eqn):
            outs = _sequential(eqn.primitive, eqn.params, *invals)
        elif rewrite and eqn.primitive.name in _INLINED:
            closed = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            outs = _evaluate(closed.jaxpr, closed.consts, *invals)
        else:
            params = ({k: _rewrite_param(v) for k, v in eqn.params.items()} if rewrite
                      else eqn.params)
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def unbatch_lapack(fn: Callable) -> Callable:
    """`fn` with every batched SVD/eigh computed one matrix at a time (`lax.map`).

    Works inside `jit` and `shard_map` bodies (it traces `fn` on the values it gets). Batched
    LAPACK calls can deadlock on the CPU (module docstring); `lapack_safe` applies this there.

    Example:
      >>> import jax.numpy as jnp
      >>> f = unbatch_lapack(jax.vmap(lambda m: jnp.linalg.svd(m, compute_uv=False)))
      >>> hlo = jax.jit(f).lower(jnp.eye(3)[None].repeat(4, 0)).compile().as_text()
      >>> batched_lapack_calls(hlo)
      []
    """
    def rewritten(*args):
        flat, tree = jax.tree_util.tree_flatten(args)
        closed, out_shape = jax.make_jaxpr(lambda *a: fn(*jax.tree_util.tree_unflatten(tree, a)),
                                           return_shape=True)(*flat)
        outs = _evaluate(closed.jaxpr, closed.consts, *flat)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return rewritten


def lapack_safe(fn: Callable) -> Callable:
    """`fn`, with every batched SVD/eigh one matrix at a time when it is traced for the CPU.

    Wrap a function before `jax.jit` (`jax.jit(lapack_safe(fn))`): the choice is made at trace
    time from `jax.default_backend()`. Composing the compiled result under another `jax.vmap`
    batches its LAPACK calls again; wrap the outer function instead.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jax.jit(lapack_safe(jax.vmap(lambda m: jnp.linalg.svd(m, compute_uv=False))))
      >>> batched_lapack_calls(f.lower(jnp.eye(3)[None].repeat(4, 0)).compile().as_text())
      []
    """
    rewritten = unbatch_lapack(fn)

    @functools.wraps(fn)
    def safe(*args):
        return (rewritten if jax.default_backend() == "cpu" else fn)(*args)

    return safe


_LAPACK_CALL = re.compile(r'custom_call_target="(lapack_\w+)"'
                          r'.*?operand_layout_constraints=\{(\w+)\[([\d,]*)\]')


def batched_lapack_calls(hlo: str) -> list[str]:
    """The LAPACK custom calls of (compiled) HLO text whose first operand is a batch of matrices.

    Returns:
      One "target dtype[shape]" string per such call (an empty list: none).
    """
    found = []
    for target, dtype, dims in _LAPACK_CALL.findall(hlo):
        shape = [int(d) for d in dims.split(",") if d]
        batch = 1
        for d in shape[:-2]:
            batch *= d
        if batch > 1:
            found.append(f"{target} {dtype}[{dims}]")
    return found
