"""Golub–Kahan runs computed before the single-vector and block recurrences became one.

`compute()` runs the recurrence on float64 matrices with prescribed spectra, from fixed start
vectors, and returns a flat {name: float64 array}: the coefficients of single-vector runs (fixed
steps, a stopped run, a rank-3 operator that breaks down, a batch of probes), the Ritz values,
residuals and error bounds of certified runs (one vector and blocks of 4 and 5 per step), and
the Ritz values of fixed block runs (one that breaks down too). Signs of the coefficients are
dropped (a 1 × 1 QR may flip a vector and its coefficient with it).

`tests/data/golub_kahan_reference.npz` holds what `compute()` returned on the code before the
merge (two modules, `_golub_kahan` and `_golub_kahan_block`, whose block runs counted block
steps); `python tests/golub_kahan_reference.py` rewrites it on whichever code is installed.
`tests/test_golub_kahan.py` compares today's values with it at 1e-12. Every run here is given
its start vector: the default start of a block run is part of what the merge unified.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from isometry.linalg import _golub_kahan as gk
from isometry.linalg._jacobian import jacobian_operator
from helpers import known_spectrum_map

try:  # the code before the merge: the block recurrence in a module of its own
    from isometry.linalg import _golub_kahan_block as gk_block
except ImportError:  # one recurrence, the block size an argument
    gk_block = None

PATH = os.path.join(os.path.dirname(__file__), "data", "golub_kahan_reference.npz")
N = 200


def _fixed(op, v0, vectors, key, b):
    """A run of `vectors` vectors (b per step) without the stopping rule."""
    if gk_block is None:
        return gk.golub_kahan(op, v0, vectors, key, block_size=b)
    if b == 1:
        return gk.golub_kahan(op, v0, vectors, key)
    return gk_block.block_golub_kahan(op, v0, vectors // b, key)


def _certified(op, v0, vectors, key, b, k, rtol):
    """(θ, residuals, error bounds, vectors done) of a certified run."""
    if gk_block is None:
        out, s, res, bounds, _ = gk.certified_run(op, v0, vectors, key, k, rtol, block_size=b)
        return s, res, bounds, out.steps
    if b == 1:
        out, s, res, bounds, _ = gk.certified_run(op, v0, vectors, key, k, rtol)
        return s, res, bounds, out.steps
    out, s, res, bounds, _ = gk_block.certified_block_run(op, v0, vectors, b, key, k, rtol)
    return s, res, bounds, out.steps * b


def _operators():
    spectra = {"clustered": jnp.concatenate([jnp.array([10.0, 10.0 - 1e-4, 10.0 - 2e-4, 9.5]),
                                             jnp.linspace(9.0, 0.1, N - 4)]),
               "sqrt": 1 / jnp.sqrt(jnp.arange(1.0, N + 1))}
    ops = {}
    for name, s in spectra.items():
        fn, _ = known_spectrum_map(jax.random.key(1), s, N, N)
        ops[name] = jacobian_operator(fn, jnp.ones(N))
    fn, _ = known_spectrum_map(jax.random.key(4), jnp.array([3.0, 2.0, 1.0]), 30, 30)
    ops["rank3"] = jacobian_operator(fn, jnp.ones(30))
    return ops


def _single(out, ops):
    v0 = jax.random.normal(jax.random.key(2), (N,))
    for name in ("clustered", "sqrt"):
        bd = jax.jit(lambda v: _fixed(ops[name], v, 60, jax.random.key(3), 1))(v0)
        _, sv, _, res = bd.ritz()
        out[f"single/{name}/alphas"], out[f"single/{name}/betas"] = bd.alphas, bd.betas
        out[f"single/{name}/ritz"], out[f"single/{name}/residuals"] = sv, res
        stopped = jax.jit(lambda v: gk.golub_kahan(ops[name], v, 150, jax.random.key(3), k=5,
                                                   rtol=1e-8))(v0)
        out[f"single/{name}/stopped_steps"] = stopped.steps
        out[f"single/{name}/stopped_alphas"] = stopped.alphas
    bd = jax.jit(lambda v: _fixed(ops["rank3"], v, 8, jax.random.key(5), 1))(jnp.arange(1.0, 31.0))
    out["single/rank3/alphas"], out["single/rank3/betas"] = bd.alphas, bd.betas
    out["single/rank3/ritz"] = bd.ritz()[1]
    probes = jax.random.rademacher(jax.random.key(6), (3, N), jnp.float64)
    runs = jax.jit(lambda p: gk.bidiagonalize_runs(ops["sqrt"], p, 24, jax.random.key(7)))(probes)
    out["runs/sqrt/alphas"], out["runs/sqrt/betas"] = runs.alphas, runs.betas


def _blocks(out, ops):
    for b in (1, 4, 5):
        v0 = jax.random.normal(jax.random.key(2), (b, N))
        start = v0[0] if b == 1 else v0
        for name in ("clustered", "sqrt"):
            s, res, bounds, steps = jax.jit(lambda v: _certified(
                ops[name], v, 180, jax.random.key(3), b, 10, 1e-8))(start)
            for field, value in (("ritz", s), ("residuals", res), ("bounds", bounds),
                                 ("steps", steps)):
                out[f"certified/b{b}/{name}/{field}"] = value
    v0 = jax.random.normal(jax.random.key(2), (4, N))
    bd = jax.jit(lambda v: _fixed(ops["clustered"], v, 120, jax.random.key(3), 4))(v0)
    out["block/clustered/ritz"] = bd.ritz()[1]
    out["block/clustered/residuals"] = bd.ritz()[3]
    v0 = jax.random.normal(jax.random.key(5), (4, 30))
    bd = jax.jit(lambda v: _fixed(ops["rank3"], v, 12, jax.random.key(5), 4))(v0)
    out["block/rank3/ritz"] = bd.ritz()[1]


def compute() -> dict[str, np.ndarray]:
    """Every value, as float64 numpy arrays (float64 enabled for the duration); coefficients
    without their signs."""
    with jax.enable_x64(True):
        out: dict = {}
        ops = _operators()
        _single(out, ops)
        _blocks(out, ops)
        return {k: np.abs(np.asarray(v, np.float64)) for k, v in out.items()}


if __name__ == "__main__":
    values = compute()
    np.savez(PATH, **values)
    print(f"wrote {len(values)} arrays to {PATH}", file=sys.stderr)
