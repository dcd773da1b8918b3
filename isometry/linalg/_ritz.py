"""Ritz values of a (block) bidiagonal B, their error bounds, and the rule that stops a run.

After s Golub–Kahan steps with blocks of b vectors (`isometry.linalg._golub_kahan`; b = 1 is
the single-vector run), J V = U B with B block upper-bidiagonal: A_1..A_s (b × b, upper
triangular) on the diagonal, C_1..C_{s−1} (lower triangular) to their right; for b = 1,
A_j = α_j and C_j = β_j. From the SVD B = P Σ Qᵀ each Ritz triplet (θ_i, U p_i, V q_i) is exact
on the J side and leaves ‖C_sᵀ E_sᵀ p_i‖ on the Jᵀ side (E_s: the last b columns of the
identity; for b = 1, |β_s P_{s,i}|): the residual bound, which `error_bounds` refines by the
gaps. The stopping rule (`stopping_loop`) certifies the top k once every bound is ≤ rtol · θ_i.

Every count of steps is in vectors (s · b): the unit of `max_steps` and
`Bidiagonalization.steps`; only the loop of `stopping_loop` counts its iterations (steps of b).

References: Parlett, "The symmetric eigenvalue problem" (1998), Thm 11.7.1; Cao, Xie & Li
(2008) for clusters; Golub, Luk & Overton (1981) for blocks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["block_matrix", "bucket_index", "bucket_sizes", "error_bounds", "ritz_residuals",
           "stopping_loop", "top_ritz"]

Array = Any


def block_matrix(diagonal: Array, superdiagonal: Array, steps: Array) -> Array:
    """B as a dense (nb·b, nb·b) array from its blocks (nb, b, b), with the blocks beyond
    `steps` vectors (s = steps / b filled steps) set to zero: A_1..A_s, C_1..C_{s−1}.

    Built by selection, not by products: each entry of B is one of the coefficients."""
    nb, b, _ = diagonal.shape
    j = jnp.arange(nb, dtype=jnp.int32)
    blocks = steps // b
    a = jnp.where((j < blocks)[:, None, None], diagonal, 0)
    c = jnp.where((j < blocks - 1)[:, None, None], superdiagonal, 0)
    on = (j[:, None] == j[None, :])[:, None, :, None]  # (nb, 1, nb, 1): block row = column
    right = (j[:, None] + 1 == j[None, :])[:, None, :, None]
    dense = jnp.where(on, a[:, :, None, :], 0) + jnp.where(right, c[:, :, None, :], 0)
    return dense.reshape(nb * b, nb * b)


def ritz_residuals(p: Array, superdiagonal: Array, steps: Array) -> Array:
    """‖C_sᵀ p_i[rows of block s]‖ for every column p_i of P (its rows: the `steps` vectors,
    s = steps / b the last filled step); for b = 1, |β_s P_{s,i}|."""
    b = superdiagonal.shape[-1]
    blocks = steps // b
    last = jax.lax.dynamic_slice_in_dim(p, (blocks - 1) * b, b, axis=0)  # (b, columns)
    coupling = jax.lax.dynamic_index_in_dim(superdiagonal, blocks - 1, keepdims=False)
    if b == 1:  # a scalar: |β_s P_{s,i}|
        return jnp.abs(coupling[0, 0] * last[0])
    return jnp.linalg.norm(coupling.T @ last, axis=0)


def bucket_sizes(count: int, m: int) -> tuple[int, ...]:
    """Static sizes (vectors) of the leading blocks of B whose SVD a convergence test takes: 128
    (if it holds `count` and is below m), then m. A test after j ≤ 128 vectors costs a 128²
    SVD (about 1 ms in float32 here) instead of an m² one (6 ms at m = 256); each size is one
    more SVD to compile, so there are at most two."""
    return ((128,) if count <= 128 < m else ()) + (m,)


def bucket_index(n, sizes):
    """Index of the smallest of `sizes` (ascending, static) that holds n (traced)."""
    return jnp.sum(n > jnp.asarray(sizes[:-1], jnp.int32)) if len(sizes) > 1 else 0


def top_ritz(diagonal, superdiagonal, steps, count: int, sizes: tuple[int, ...]):
    """The top `count` Ritz values of B after `steps` vectors and their residual bounds.

    The SVD is taken of the smallest leading block of the (zero-padded) B buffer in `sizes`
    (vectors, multiples of b) that holds the `steps` filled ones (`lax.switch`), not of the
    whole buffer."""
    b = diagonal.shape[-1]

    def leading(size):
        def svd(a, c, steps):
            nb = size // b
            p, sv, _ = jnp.linalg.svd(block_matrix(a[:nb], c[:nb], steps))
            return sv[:count], ritz_residuals(p, c, steps)[:count]
        return svd

    return jax.lax.switch(bucket_index(steps, sizes), [leading(s) for s in sizes], diagonal,
                          superdiagonal, steps)


#: Relative gaps below which neighbouring Ritz values are also bounded as one cluster.
_CLUSTER_GAPS = (0.0, 1e-3, 1e-2, 1e-1)


def error_bounds(values: Array, residuals: Array, steps: Array | int | None = None) -> Array:
    """Bounds on σ_i(J) − θ_i for Ritz values θ (descending) with residual bounds r.

    Each Ritz triplet (θ_i, U p_i, V q_i) is an approximate eigenpair of the symmetric
    H = [[0, J], [Jᵀ, 0]] with residual r_i/√2. Three bounds, the smallest taken:

    * r_i (some eigenvalue of H lies within the residual);
    * the gap bound r_i² / (2 δ_i) (Parlett, Thm 11.7.1), δ_i the distance from θ_i to the
      rest of the spectrum, estimated as min(θ_{i−1} − θ_i, θ_i − θ_{i+1} − r_{i+1}) (above,
      σ_{i−1} ≥ θ_{i−1} by interlacing; below, θ_{i+1} + r_{i+1} stands in for σ_{i+1} as in
      PROPACK, a heuristic: a value the Krylov space has not seen yet cannot be bounded);
    * for a cluster C of neighbours closer than a relative gap τ ∈ `_CLUSTER_GAPS`, the
      block bound Σ_{j∈C} r_j² / (2 δ_C) (Cao, Xie & Li 2008), δ_C the gap from the cluster
      to the rest: tight for tight clusters, where δ_i is tiny but δ_C is not.

    A quadratic bound applies only when the gap exceeds the residual. The bounds are those of
    the computed B: round-off of the products (about eps · σ_max) is not included.

    Args:
      values: θ, descending, (count,).
      residuals: r, (count,).
      steps: vectors in the basis (θ_i with i ≥ steps are padding); None: all are real.

    Returns:
      Error bounds, (count,) (∞-free: at most r_i; the last value gets r only).
    """
    count = values.shape[-1]
    idx = jnp.arange(count, dtype=jnp.int32)
    real = count if steps is None else jnp.minimum(steps, count)
    r2 = jnp.square(residuals)

    def clustered(tau):  # the bounds with clusters of relative gap ≤ tau
        gaps = values[:-1] - values[1:]
        boundary = gaps > tau * values[:-1]
        label = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(boundary, dtype=jnp.int32)])
        same = label[:, None] == label[None, :]
        first = jnp.min(jnp.where(same, idx[None, :], count), axis=1)
        last = jnp.max(jnp.where(same, idx[None, :], -1), axis=1)
        block = jnp.sum(jnp.where(same, r2[None, :], 0), axis=1)
        above = jnp.where(first > 0, values[jnp.maximum(first - 1, 0)] - values[first], jnp.inf)
        below_ok = last + 1 < real
        nxt = jnp.minimum(last + 1, count - 1)
        below = jnp.where(below_ok, values[last] - values[nxt] - residuals[nxt], -jnp.inf)
        gap = jnp.minimum(above, below)
        ok = (gap > jnp.sqrt(block)) & below_ok
        return jnp.where(ok, block / (2 * jnp.where(ok, gap, 1)), jnp.inf)

    taus = jnp.asarray(_CLUSTER_GAPS, values.dtype)
    return jnp.minimum(residuals, jnp.min(jax.vmap(clustered)(taus), axis=0))


def _stop_ratio(values, residuals, steps, k, rtol):
    """max_i≤k of error bound / (rtol · θ_i): ≤ 1 means the top k are certified."""
    bounds = error_bounds(values, residuals, steps)[:k]
    tiny = jnp.finfo(values.dtype).tiny
    return jnp.max(bounds / jnp.maximum(rtol * values[:k], tiny)), bounds


def _next_test(j, ratio, last_j, last_log, limit):
    """(the iteration of the next convergence test, ln ratio) after a test at iteration j.

    With ρ = `ratio` (`_stop_ratio`) falling by a factor e^c per iteration since the last test
    (at `last_j`, ln ρ = `last_log`), ρ reaches 1 after about ln ρ / c more iterations; the
    next test comes after half of them (at least 1, at most j/8, at most `limit`)."""
    log_ratio = jnp.log(jnp.maximum(ratio, jnp.finfo(ratio.dtype).tiny))
    rate = (last_log - log_ratio) / jnp.maximum(j - last_j, 1).astype(log_ratio.dtype)
    ahead = jnp.where((last_j > 0) & (rate > 0), log_ratio / rate, jnp.inf)
    interval = jnp.clip(jnp.floor(ahead / 2), 1,
                        jnp.maximum(j // 8, 1).astype(ahead.dtype)).astype(jnp.int32)
    return jnp.minimum(j + interval, limit), log_ratio


def stopping_loop(step, ritz, carry, limit, first, k, rtol, per_step, dtype):
    """The stopping rule: `carry = step(j, carry)` for j = 0, 1, … until the top-k Ritz
    values are certified (every error bound ≤ rtol · θ_i) or `limit` iterations ran.

    The loop counts iterations (Golub–Kahan steps of `per_step` vectors each); `ritz` is
    called with the vectors done, j · per_step.

    Args:
      step: (j, carry) → carry, one Golub–Kahan step (b vectors).
      ritz: (carry, vectors) → (θ, r), the top Ritz values and residual bounds.
      carry: the run's state before step 0.
      limit, first: the most iterations, and the iteration of the first test (static ints);
        later tests are scheduled from the observed convergence rate (`_next_test`).
      k, rtol: how many values, to what relative accuracy.
      per_step: vectors a step adds (the block size b).
      dtype: of the coefficients.

    Returns:
      (iterations, carry, tests, (θ[:k], r[:k], error bounds)) from the last test.
    """
    def body(state):
        j, carry, next_test, last_j, last_log, done, tests, found = state
        carry = step(j, carry)
        j = j + 1

        def test(_):
            s, res = ritz(carry, j * per_step)
            ratio, bounds = _stop_ratio(s, res, j * per_step, k, rtol)
            upcoming, log_ratio = _next_test(j, ratio, last_j, last_log, limit)
            return upcoming, j, log_ratio, log_ratio <= 0, tests + 1, (s[:k], res[:k], bounds)

        tested = jax.lax.cond(j >= next_test, test,
                              lambda _: (next_test, last_j, last_log, done, tests, found), None)
        return (j, carry) + tested

    def unfinished(state):
        j, _, _, _, _, done, _, _ = state
        return (j < limit) & ~done

    zero = jnp.zeros((), jnp.int32)
    nothing = (jnp.zeros((k,), dtype),) * 3
    state = (zero, carry, jnp.asarray(min(first, limit), jnp.int32), zero, jnp.zeros((), dtype),
             jnp.zeros((), bool), zero, nothing)
    iterations, carry, _, _, _, _, tests, found = jax.lax.while_loop(unfinished, body, state)
    return iterations, carry, tests, found
