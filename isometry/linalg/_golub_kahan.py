"""Golub–Kahan–Lanczos bidiagonalization of a matrix-free J, its Ritz values and error bounds.

For J = ∂y/∂x (n_out × n_in) available only as products v ↦ Jv and u ↦ Jᵀu
(`jacobian_operator`), m steps of Golub–Kahan–Lanczos bidiagonalization from a unit vector
v₁ build orthonormal V = [v₁ … v_m], U = [u₁ … u_m] and the upper-bidiagonal B (diagonal
α_j, superdiagonal β_j) with

    J V = U B,        Jᵀ U = V Bᵀ + β_m v_{m+1} e_mᵀ.

Every vector is re-orthogonalized against all earlier ones (twice, classical Gram–Schmidt
by chunks of 16 rows, reading only the rows filled so far: step j costs two products and
O(j · n)), so the recurrence stays accurate in floating point; a breakdown (α_j or β_j at
round-off level: an invariant subspace was found, e.g. J = I) restarts with a random
orthogonal vector, computed only when it happens.

From the SVD B = P Σ Qᵀ, the Ritz values σ_i(B) ≤ σ_i(J) and their residual bounds
|β_m P_{m,i}| (`Bidiagonalization.ritz`), refined by the gaps (`error_bounds`), and the
stopping rule that certifies the top k (`golub_kahan`, `certified_run`).

Reference: Golub & Kahan (1965).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from isometry.linalg._jacobian import JacobianOperator

__all__ = ["Bidiagonalization", "bidiagonalize_runs", "bucket_index", "bucket_sizes",
           "certified_run", "error_bounds", "golub_kahan", "hashed_normal", "stopping_loop",
           "sweep_chunks"]

Array = Any

# A coefficient below this many ulps of the operator's scale is a breakdown.
BREAKDOWN_ULPS = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bidiagonalization:
    """The upper-bidiagonal B of J from `golub_kahan`, with both Krylov bases.

    Buffers have the static length m = num_steps; after an early stop only the first `steps`
    entries are filled (the rest are 0). With s = steps, V_s = right_vectors[:s]ᵀ and
    U_s = left_vectors[:s]ᵀ (columns):

        J V_s = U_s B_s,        Jᵀ U_s = V_s B_sᵀ + β_s v_{s+1} e_sᵀ.

    Attributes:
      alphas: diagonal α_1..α_m, shape (m,).
      betas: β_1..β_m; β_1..β_{s−1} are B's superdiagonal, β_s couples to the next v (the
        residual of the last step), shape (m,).
      steps: number of steps done (≤ m), an int array.
      right_vectors: v_1..v_m as rows (zero beyond `steps`), shape (m, n_in).
      left_vectors: u_1..u_m as rows (zero beyond `steps`), shape (m, n_out).
      next_vector: v_{s+1}, the unit direction of the residual, shape (n_in,).
    """

    alphas: Array
    betas: Array
    steps: Array
    right_vectors: Array
    left_vectors: Array = None
    next_vector: Array = None

    def matrix(self) -> Array:
        """B as a dense (m, m) array (zero beyond `steps`: extra zero singular values)."""
        m = self.alphas.shape[-1]
        superdiag = jnp.where(jnp.arange(m - 1, dtype=jnp.int32) < self.steps - 1, self.betas[:-1], 0)
        return jnp.diag(self.alphas) + jnp.diag(superdiag, 1)

    def ritz(self):
        """(P, σ, Qᵀ, residuals): the SVD B = P diag(σ) Qᵀ, σ descending, and the residual
        bounds |β_steps P_{steps,i}| of the Ritz triplets (0 for the padding's zeros)."""
        p, s, qt = jnp.linalg.svd(self.matrix())
        last = self.steps - 1
        residuals = jnp.abs(self.betas[last] * p[last, :])
        return p, s, qt, residuals


# --- reorthogonalization on the active rows -------------------------------------------------
#: Rows per reorthogonalization chunk: the basis is swept chunk by chunk up to the last filled
#: row, so a step costs O(steps · n), not O(max_steps · n).
CHUNK = 16


def _project_out(w: Array, basis: Array, rows: Array) -> Array:
    """w minus its projection on the first `rows` rows of `basis`, twice (CGS2 by chunks).

    Args:
      w: vectors (p, n), one per independent run.
      basis: orthonormal rows (p, M, n), M a multiple of `CHUNK`; rows ≥ `rows` are zero.
      rows: number of filled rows (traced); only ⌈rows / CHUNK⌉ chunks are read.

    Each pass subtracts, chunk by chunk, h = B_c w then w ← w − B_cᵀ h (classical within a
    chunk, modified between chunks); the second pass removes what round-off left of the first
    ("twice is enough", Giraud et al. 2005).
    """
    def subtract(w, block):  # block: (p, c, n)
        if w.shape[0] == 1:  # one run: plain matrix-vector products
            return w - ((block[0] @ w[0]) @ block[0])[None]
        h = jnp.einsum("pcn,pn->pc", block, w)
        return w - jnp.einsum("pc,pcn->pn", h, block)

    return sweep_chunks(w, basis, rows, 1, subtract)


def sweep_chunks(w, basis, rows, axis, subtract):
    """w after `subtract(w, chunk)` for every `CHUNK`-row chunk of `basis` (rows along `axis`)
    up to the first `rows` rows, all of them twice, in one loop (chunk i mod ⌈rows / CHUNK⌉):
    the sweep of classical Gram–Schmidt twice by chunks, reading only the filled rows."""
    nchunks = (rows + CHUNK - 1) // CHUNK

    def chunk(i, w):
        start = (i % jnp.maximum(nchunks, 1)) * CHUNK
        return subtract(w, jax.lax.dynamic_slice_in_dim(basis, start, CHUNK, axis=axis))

    return jax.lax.fori_loop(0, 2 * nchunks, chunk, w)


def hashed_normal(key: Array, n: int, dtype) -> Array:
    """n pseudo-random numbers of zero mean and unit variance from a cheap integer hash of
    the key (a multiply-xorshift mix of the index and the key's bits, then the uniform
    mapped to [−√3, √3]). For start and restart directions, which only need to be generic:
    it compiles in a fraction of the time of `jax.random.normal` (threefry) on CPU."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    seed = jnp.asarray(data, jnp.uint32).reshape(-1)
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + seed[0]
    for mult in (0x85EBCA6B, 0xC2B2AE35):
        h = (h ^ (h >> 16)) * jnp.uint32(mult) + seed[-1]
    h = h ^ (h >> 16)
    uniform = (h >> 8).astype(jnp.float32) * (1.0 / 2**24) + (0.5 / 2**24)
    return (math.sqrt(3.0) * (2.0 * uniform - 1.0)).astype(dtype)


def _unit(w: Array) -> Array:
    norm = jnp.linalg.norm(w, axis=-1, keepdims=True)
    return w / jnp.maximum(norm, jnp.finfo(w.dtype).tiny)


def _next_vector(w, raw_norm, basis, rows, scale, direction, ulps):
    """Coefficients and unit vectors of w ⟂ basis; a random orthogonal direction on breakdown.

    A coefficient at round-off level (≤ ulps · max(‖raw‖, ‖B‖ so far)) means an invariant
    subspace was found: the run continues from `direction` orthogonalized against the basis,
    with coefficient 0, so the bidiagonal relations stay exact. The orthogonalization is a
    loop of one pass, taken a second time (on the restart direction) only when some run broke
    down: the restart costs nothing otherwise, and its code is the same traced loop body
    (one copy of the orthogonalization in the program; under `vmap` the second pass runs when
    any member of the batch broke down).
    """

    def attempt(state):
        tries, w, coef, broke = state
        again = tries > 0
        candidate = jnp.where((again & broke)[:, None], direction, w)
        candidate = _project_out(candidate, basis, rows)
        norm = jnp.linalg.norm(candidate, axis=-1)
        return (tries + 1, jnp.where((again & ~broke)[:, None], w, candidate),
                jnp.where(again, coef, norm),
                jnp.where(again, broke, norm <= ulps * jnp.maximum(raw_norm, scale)))

    def pending(state):
        tries, _, _, broke = state
        return (tries == 0) | ((tries == 1) & jnp.any(broke))

    no = jnp.zeros(w.shape[:1], bool)
    _, w, coef, broke = jax.lax.while_loop(pending, attempt, (0, w, jnp.zeros(w.shape[:1], w.dtype), no))
    return jnp.where(broke, 0.0, coef), _unit(w)


def _products(op: JacobianOperator, vectors: Array, side: str) -> Array:
    """J v (side "J") or Jᵀ u (side "JT") for every row of `vectors` (p, n), batched."""
    fn = op.matvec if side == "J" else op.rmatvec
    if vectors.shape[0] == 1:
        return fn(vectors[0])[None]
    return jax.vmap(fn)(vectors)


def _gk_step(op, g_u, g_v, ulps, j, carry):
    """Step j (0-based) of p independent runs: α_j u_j = J v_j − β_{j−1} u_{j−1}, then
    β_j v_{j+1} = Jᵀ u_j − α_j v_j, each orthogonalized against the run's earlier vectors."""
    us, vs, alphas, betas, scale = carry
    v = jax.lax.dynamic_index_in_dim(vs, j, axis=1, keepdims=False)  # (p, n_in)
    jv = _products(op, v, "J")
    u_prev = jax.lax.dynamic_index_in_dim(us, jnp.maximum(j - 1, 0), axis=1, keepdims=False)
    beta_prev = jnp.where(j > 0, jax.lax.dynamic_index_in_dim(betas, jnp.maximum(j - 1, 0),
                                                              axis=1, keepdims=False), 0.0)
    alpha, u = _next_vector(jv - beta_prev[:, None] * u_prev, jnp.linalg.norm(jv, axis=-1),
                            us, j, scale, jnp.roll(g_u, j), ulps)
    scale = jnp.maximum(scale, alpha)
    jtu = _products(op, u, "JT")
    beta, v_next = _next_vector(jtu - alpha[:, None] * v, jnp.linalg.norm(jtu, axis=-1),
                                vs, j + 1, scale, jnp.roll(g_v, j), ulps)
    scale = jnp.maximum(scale, beta)
    return (jax.lax.dynamic_update_index_in_dim(us, u, j, axis=1),
            jax.lax.dynamic_update_index_in_dim(vs, v_next, j + 1, axis=1),
            alphas.at[:, j].set(alpha), betas.at[:, j].set(beta), scale)


def _gk_init(op, v0, m, key):
    """Zero buffers (rows padded to whole chunks), v_1 = v0/‖v0‖, and the restart directions:
    one Gaussian vector per side, rolled by the step number (no random draws in the loop)."""
    p, dtype = v0.shape[0], op.dtype
    g = hashed_normal(key, op.n_out + op.n_in, dtype)
    g_u, g_v = g[:op.n_out], g[op.n_out:]
    rows_u = -(-m // CHUNK) * CHUNK
    rows_v = -(-(m + 1) // CHUNK) * CHUNK
    vs = jnp.zeros((p, rows_v, op.n_in), dtype).at[:, 0].set(_unit(jnp.asarray(v0, dtype)))
    carry = (jnp.zeros((p, rows_u, op.n_out), dtype), vs, jnp.zeros((p, m), dtype),
             jnp.zeros((p, m), dtype), jnp.zeros((p,), dtype))
    return carry, g_u, g_v


def _bidiagonalization(carry, steps, m) -> Bidiagonalization:
    us, vs, alphas, betas, _ = carry
    filled = (jnp.arange(m, dtype=jnp.int32) < steps)[:, None]
    nxt = jax.lax.dynamic_index_in_dim(vs, steps, axis=1, keepdims=False)
    return Bidiagonalization(alphas, betas, jnp.full((alphas.shape[0],), steps),
                             jnp.where(filled, vs[:, :m], 0), jnp.where(filled, us[:, :m], 0), nxt)


def bidiagonalize_runs(op: JacobianOperator, v0: Array, num_steps: int, key: Array):
    """`num_steps` steps of p independent Golub–Kahan runs from the rows of v0 (p, n_in),
    their products batched (SLQ probes). Returns a `Bidiagonalization` with a leading p axis."""
    m = num_steps
    carry, g_u, g_v = _gk_init(op, v0, m, key)
    ulps = BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    carry = jax.lax.fori_loop(0, m, functools.partial(_gk_step, op, g_u, g_v, ulps), carry)
    return _bidiagonalization(carry, jnp.asarray(m, jnp.int32), m)


# --- Ritz values and their error bounds ------------------------------------------------------
def bucket_sizes(count: int, m: int) -> tuple[int, ...]:
    """Static sizes of the leading blocks of B whose SVD a convergence test takes: 128 (if it
    holds `count` and is below m), then m. A test after j ≤ 128 steps costs a 128² SVD
    (about 1 ms in float32 here) instead of an m² one (6 ms at m = 256); each size is one
    more SVD to compile, so there are at most two."""
    return ((128,) if count <= 128 < m else ()) + (m,)


def _top_ritz(alphas: Array, betas: Array, steps: Array, count: int, sizes: tuple[int, ...]):
    """The top `count` Ritz values σ_i(B_steps) and residual bounds |β_steps P_{steps,i}|.

    The SVD is taken of the smallest leading block of the (zero-padded) B buffer in `sizes`
    that holds B_steps (`lax.switch`), not of the whole buffer.
    """

    def leading(s):
        def svd(alphas, betas, steps):
            sup = jnp.where(jnp.arange(s - 1, dtype=jnp.int32) < steps - 1, betas[:s - 1], 0)
            p, sv, _ = jnp.linalg.svd(jnp.diag(alphas[:s]) + jnp.diag(sup, 1))
            last = jnp.minimum(steps, s) - 1
            res = jnp.abs(betas[steps - 1] * p[last, :])
            return sv[:count], res[:count]
        return svd

    return jax.lax.switch(bucket_index(steps, sizes), [leading(s) for s in sizes], alphas, betas,
                          steps)


def bucket_index(n, sizes):
    """Index of the smallest of `sizes` (ascending, static) that holds n (traced)."""
    return jnp.sum(n > jnp.asarray(sizes[:-1], jnp.int32)) if len(sizes) > 1 else 0


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
      steps: number of steps (θ_i with i ≥ steps are padding); None: all are real.

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


def _next_test_step(j, ratio, last_j, last_log, limit):
    """(the step of the next convergence test, ln ratio) after a test at step j.

    With ρ = `ratio` (`_stop_ratio`) falling by a factor e^c per step since the last test
    (at `last_j`, ln ρ = `last_log`), ρ reaches 1 after about ln ρ / c more steps; the next
    test comes after half of them (at least 1, at most j/8, at most `limit`)."""
    log_ratio = jnp.log(jnp.maximum(ratio, jnp.finfo(ratio.dtype).tiny))
    rate = (last_log - log_ratio) / jnp.maximum(j - last_j, 1).astype(log_ratio.dtype)
    ahead = jnp.where((last_j > 0) & (rate > 0), log_ratio / rate, jnp.inf)
    interval = jnp.clip(jnp.floor(ahead / 2), 1,
                        jnp.maximum(j // 8, 1).astype(ahead.dtype)).astype(jnp.int32)
    return jnp.minimum(j + interval, limit), log_ratio


def stopping_loop(step, ritz, carry, limit, first, k, rtol, per_step, dtype):
    """The stopping rule: `carry = step(j, carry)` for j = 0, 1, … until the top-k Ritz
    values are certified (every error bound ≤ rtol · θ_i) or `limit` steps ran.

    Args:
      step: (j, carry) → carry, one (block) step.
      ritz: (carry, j) → (θ, r), the top Ritz values and residual bounds after j steps.
      carry: the run's state before step 0.
      limit, first: the most steps, and the step of the first test (static ints); later
        tests are scheduled from the observed convergence rate (`_next_test_step`).
      k, rtol: how many values, to what relative accuracy.
      per_step: vectors a step adds (the block size).
      dtype: of the coefficients.

    Returns:
      (steps, carry, tests, (θ[:k], r[:k], error bounds)) from the last test.
    """
    def body(state):
        j, carry, next_test, last_j, last_log, done, tests, found = state
        carry = step(j, carry)
        j = j + 1

        def test(_):
            s, res = ritz(carry, j)
            ratio, bounds = _stop_ratio(s, res, j * per_step, k, rtol)
            upcoming, log_ratio = _next_test_step(j, ratio, last_j, last_log, limit)
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
    steps, carry, _, _, _, _, tests, found = jax.lax.while_loop(unfinished, body, state)
    return steps, carry, tests, found


def golub_kahan(op: JacobianOperator, v0: Array, num_steps: int, key: Array, *,
                k: int | None = None, rtol: float = 1e-6) -> Bidiagonalization:
    """Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization.

    Starting from v₁ = v0/‖v0‖:
        α_j u_j = J v_j − β_{j−1} u_{j−1},    β_j v_{j+1} = Jᵀ u_j − α_j v_j,
    each new vector orthogonalized twice against the earlier u's (or v's) — only the rows
    filled so far, chunk by chunk, so step j costs two products and O(j · n). When α_j or β_j
    falls to round-off level (an invariant subspace, e.g. J = I or rank J < m) the recurrence
    continues from a random vector orthogonal to the basis, its coefficient set to 0; this
    keeps J V = U B and Jᵀ U = V Bᵀ + β_s v_{s+1} e_sᵀ exact.

    Stopping rule (when `k` is given): after step j the top-k Ritz values of B_j get the
    error bounds of `error_bounds` (residual, gap and cluster bounds); the run stops as soon
    as every bound is ≤ rtol · θ_i, or after `num_steps` steps. Tests are scheduled from the
    observed convergence rate: with ρ = max_i bound_i / (rtol θ_i) falling by a factor e^c
    per step, the next test comes after ⌊(ln ρ / c) / 2⌋ steps (at least 1, at most j/8), so
    tests get denser as ρ nears 1 and the run overshoots the first certifiable step by
    little. A test costs the SVD of the leading 128 × 128 block of B (or all of B past 128 steps).

    Args:
      op: the operator (`jacobian_operator`): matvec (n_in,) → (n_out,), rmatvec back.
      v0: starting vector (n_in,), not zero.
      num_steps: m, the most steps, ≤ min(n_in, n_out) (static).
      key: PRNG key for restart vectors.
      k: stop early once the top k Ritz values are certified (None: run all m steps).
      rtol: relative error bound of the stopping rule.

    Returns:
      `Bidiagonalization` with α, β of shape (m,), both bases, and the number of steps done.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from isometry.linalg._jacobian import jacobian_operator
      >>> a = jnp.diag(jnp.arange(1.0, 21.0))
      >>> op = jacobian_operator(lambda x: a @ x, jnp.ones(20))
      >>> bd = golub_kahan(op, jnp.ones(20), 20, jax.random.key(0), k=3, rtol=1e-5)
      >>> _, s, _, res = bd.ritz()
      >>> [round(float(v), 3) for v in s[:3]]
      [20.0, 19.0, 18.0]
    """
    m = num_steps
    if not 1 <= m <= min(op.n_in, op.n_out):
        raise ValueError(f"num_steps must be in [1, min(n_in, n_out) = {min(op.n_in, op.n_out)}], "
                         f"got {m}")
    if k is None:
        out = bidiagonalize_runs(op, jnp.asarray(v0)[None], m, key)
        return jax.tree_util.tree_map(lambda a: a[0], out)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, num_steps = {m}], got {k}")
    return certified_run(op, v0, m, key, k, rtol)[0]


def certified_run(op, v0, m, key, k, rtol):
    """The stopping-rule run of `golub_kahan`: (Bidiagonalization, θ, r, bounds, tests), the
    top-k Ritz values θ, their residuals r and error bounds from the last test (the test
    after the last step). v0 None: a Gaussian start drawn with the restart directions."""
    if v0 is None:  # a generic start, drawn apart from the restart directions
        v0 = hashed_normal(key, op.n_out + 2 * op.n_in, op.dtype)[-op.n_in:]
    carry, g_u, g_v = _gk_init(op, jnp.asarray(v0)[None], m, key)
    ulps = BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    step = functools.partial(_gk_step, op, g_u, g_v, ulps)
    count = min(k + 6, m)
    sizes = bucket_sizes(count, m)

    def ritz(carry, j):
        _, _, alphas, betas, _ = carry
        return _top_ritz(alphas[0], betas[0], j, count, sizes)

    steps, carry, tests, (s, res, bounds) = stopping_loop(step, ritz, carry, m, k + 1, k, rtol, 1,
                                                          op.dtype)
    out = jax.tree_util.tree_map(lambda a: a[0], _bidiagonalization(carry, steps, m))
    return out, s, res, bounds, tests
