"""Golub–Kahan–Lanczos bidiagonalization of a matrix-free J, b vectors per step (b ≥ 1).

For J = ∂y/∂x (n_out × n_in) available only as products v ↦ Jv and u ↦ Jᵀu
(`jacobian_operator`), step j of the block recurrence from V_1 (b orthonormal rows) computes
the QR factorizations

    U_j A_j = J V_j − U_{j−1} C_{j−1},        V_{j+1} C_jᵀ = Jᵀ U_j − V_j A_jᵀ,

A_j upper and C_j lower triangular (b × b). After s steps, with V = [V_1 … V_s] and
U = [U_1 … U_s] (s·b orthonormal columns each) and B block upper-bidiagonal (A_j on the
diagonal, C_j to its right):

    J V = U B,        Jᵀ U = V Bᵀ + V_{s+1} C_sᵀ E_sᵀ,

E_s the last b columns of the identity. The block size is an argument: b = 1 is the
single-vector recurrence α_j u_j = J v_j − β_{j−1} u_{j−1}, β_j v_{j+1} = Jᵀ u_j − α_j v_j
(A_j = α_j, C_j = β_j), where the same code takes matrix–vector products in place of
matrix–matrix ones. Every count of steps (`max_steps`, `Bidiagonalization.steps`) is in
vectors, s · b: the products with J a run takes.

Why blocks: the b products of a step are one batched product (`vmap`: matrix–matrix), which
reads the weights of J once. Where the products are memory-bound (dense layers of width
~1,000 on a CPU) b = 16 of them cost about 2.5× one, and a block wider than a cluster of top
values converges at the rate of the gap below the block, not of the gaps inside it.

Every block is re-orthogonalized against all earlier vectors (classical Gram–Schmidt twice, by
chunks of 16 rows, reading only the rows filled so far: step j costs 2b products and
O(j · b² · n)), then within itself row by row (twice). A row at round-off level (a breakdown:
an invariant subspace was found, e.g. J = I or rank J < s·b) gets coefficient 0 and a random
direction orthogonal to everything before it, computed only when it happens, so the relations
stay exact. Ritz values, their error bounds and the stopping rule that certifies the top k are
in `isometry.linalg._ritz`.

References: Golub & Kahan (1965); Golub, Luk & Overton (1981), "A block Lanczos method for
computing the singular values and corresponding singular vectors of a matrix".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from isometry.linalg._jacobian import JacobianOperator
from isometry.linalg._ritz import (block_matrix, bucket_sizes, ritz_residuals, stopping_loop,
                                   top_ritz)

__all__ = ["Bidiagonalization", "bidiagonalize_runs", "certified_run", "golub_kahan",
           "hashed_normal", "start_block", "sweep_chunks"]

Array = Any

# A coefficient below this many ulps of the operator's scale is a breakdown.
BREAKDOWN_ULPS = 64
#: Rows per reorthogonalization chunk: the basis is swept chunk by chunk up to the last filled
#: row, so a step costs O(steps · n), not O(max_steps · n).
CHUNK = 16


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bidiagonalization:
    """The block upper-bidiagonal B of J from `golub_kahan`, with both Krylov bases.

    With b the block size and M = ⌊max_steps / b⌋ · b, buffers are static; after a run of
    s = `steps` vectors (s / b steps) only the first s rows are filled, the rest are 0. With
    V_s = right_vectors[:s]ᵀ and U_s = left_vectors[:s]ᵀ (columns):

        J V_s = U_s B_s,        Jᵀ U_s = V_s B_sᵀ + V_{s+1} C_sᵀ E_sᵀ.

    Attributes:
      diagonal: A_1..A_{M/b}, upper-triangular blocks, (M/b, b, b); for b = 1 the α_j.
      superdiagonal: C_1..C_{M/b}, lower-triangular; C_1..C_{s/b−1} are B's, C_{s/b} couples
        to V_{s+1} (the residual of the last step), (M/b, b, b); for b = 1 the β_j.
      steps: vectors done (≤ M, a multiple of b), an int array.
      right_vectors: the columns of V as rows (zero beyond `steps`), (M, n_in).
      left_vectors: the columns of U as rows (zero beyond `steps`), (M, n_out).
      next_vectors: V_{s+1} as rows, the unit directions of the residual, (b, n_in).
    """

    diagonal: Array
    superdiagonal: Array
    steps: Array
    right_vectors: Array
    left_vectors: Array
    next_vectors: Array

    @property
    def block_size(self) -> int:
        """b, the vectors per step."""
        return self.diagonal.shape[-1]

    def _coefficients(self, blocks: Array) -> Array:
        if self.block_size != 1:
            raise ValueError(f"alphas, betas and next_vector belong to a run of one vector per "
                             f"step; this one has blocks of {self.block_size}: read diagonal, "
                             f"superdiagonal and next_vectors")
        return blocks[..., 0, 0]

    @property
    def alphas(self) -> Array:
        """α_1..α_M of a single-vector run (b = 1), (M,)."""
        return self._coefficients(self.diagonal)

    @property
    def betas(self) -> Array:
        """β_1..β_M of a single-vector run: β_s couples to v_{s+1}, (M,)."""
        return self._coefficients(self.superdiagonal)

    @property
    def next_vector(self) -> Array:
        """v_{s+1} of a single-vector run, (n_in,)."""
        self._coefficients(self.diagonal)
        return self.next_vectors[..., 0, :]

    def matrix(self) -> Array:
        """B as a dense (M, M) array (zero beyond `steps`: extra zero singular values)."""
        return block_matrix(self.diagonal, self.superdiagonal, self.steps)

    def ritz(self):
        """(P, σ, Qᵀ, residuals): the SVD B = P diag(σ) Qᵀ, σ descending, and the residual
        bounds ‖C_sᵀ E_sᵀ p_i‖ of the Ritz triplets (|β_s P_{s,i}| for b = 1)."""
        p, s, qt = jnp.linalg.svd(self.matrix())
        return p, s, qt, ritz_residuals(p, self.superdiagonal, self.steps)


# --- orthogonalization -----------------------------------------------------------------------
def sweep_chunks(w, basis, rows, subtract):
    """w after `subtract(w, chunk)` for every `CHUNK`-row chunk of `basis` up to the first
    `rows` rows, all of them twice, in one loop (chunk i mod ⌈rows / CHUNK⌉): the sweep of
    classical Gram–Schmidt twice by chunks, reading only the filled rows."""
    nchunks = (rows + CHUNK - 1) // CHUNK

    def chunk(i, w):
        start = (i % jnp.maximum(nchunks, 1)) * CHUNK
        return subtract(w, jax.lax.dynamic_slice_in_dim(basis, start, CHUNK, axis=0))

    return jax.lax.fori_loop(0, 2 * nchunks, chunk, w)


def _project_out(w: Array, basis: Array, rows: Array) -> Array:
    """The rows of w (b, n) minus their projections on the first `rows` rows of `basis`
    (M, n, M a multiple of `CHUNK`, zero beyond `rows`), twice: h = B_c w, then
    w ← w − B_cᵀ h, chunk by chunk (classical within a chunk, modified between chunks); the
    second pass removes what round-off left of the first ("twice is enough", Giraud et al.
    2005). One row (b = 1): matrix–vector products."""
    def subtract(w, block):  # block: (CHUNK, n)
        if w.shape[0] == 1:
            return w - ((block @ w[0]) @ block)[None]
        return w - (w @ block.T) @ block

    return sweep_chunks(w, basis, rows, subtract)


def _combine(coef: Array, rows: Array) -> Array:
    """coef @ rows, (b, b) × (b, n); for b = 1 a scalar multiple."""
    return coef * rows if coef.shape[-1] == 1 else coef @ rows


def _unit(w: Array) -> Array:
    norm = jnp.linalg.norm(w, axis=-1, keepdims=True)
    return w / jnp.maximum(norm, jnp.finfo(w.dtype).tiny)


def _orthonormal_within(w, spare, threshold):
    """(R, Q, lost): the QR w = Rᵀ Q of the block w (b, n), Q's rows orthonormal, R upper
    triangular, by modified Gram–Schmidt twice within the block.

    A row whose remainder is at most its `threshold` (the block lost rank) gets R_ii = 0 and,
    as Q's row i, its `spare` made orthogonal to the rows before it; the rows after it are
    orthogonalized against that row in turn, so w = Rᵀ Q stays exact. `lost` marks those rows.
    """
    b = w.shape[0]
    if b == 1:  # one row: its norm
        norm = jnp.linalg.norm(w, axis=-1)
        lost = norm <= threshold
        q = jnp.where(lost[:, None], _unit(spare), _unit(w))
        return jnp.where(lost, 0, norm)[:, None], q, lost
    idx = jnp.arange(b, dtype=jnp.int32)

    def row(i, carry):
        q, r, lost = carry
        earlier = idx < i
        pair = jnp.stack([w[i], spare[i]])  # the row and its spare, minus their
        coef = jnp.zeros((2, b), q.dtype)     # projections on q_{<i}, twice
        for _ in range(2):
            h = jnp.where(earlier, pair @ q.T, 0)
            pair, coef = pair - h @ q, coef + h
        norm = jnp.linalg.norm(pair[0])
        gone = norm <= threshold[i]
        new = _unit(jnp.where(gone, pair[1], pair[0]))
        r = r.at[:, i].set(coef[0].at[i].set(jnp.where(gone, 0, norm)))
        return q.at[i].set(new), r, lost.at[i].set(gone)

    init = (jnp.zeros_like(w), jnp.zeros((b, b), w.dtype), jnp.zeros((b,), bool))
    q, r, lost = jax.lax.fori_loop(0, b, row, init)
    return r, q, lost


def _next_rows(w, raw_norms, basis, rows, scale, directions, ulps):
    """(R, Q): w = Rᵀ Q with Q's rows orthonormal and ⟂ basis[:rows], R upper triangular.

    A row at round-off level (≤ ulps · max(‖its product‖, ‖B‖ so far)) means an invariant
    subspace was found: the run continues from its row of `directions`, orthogonalized against
    the basis and the rows before it, with coefficient 0, so the relations stay exact. The
    orthogonalization is a loop of one pass, taken a second time (on the restart directions)
    only when some row broke down: the restart costs nothing otherwise, and its code is the
    same traced loop body (under `vmap` the second pass runs when any member broke down).
    """
    threshold = ulps * jnp.maximum(raw_norms, scale)

    def attempt(state):
        tries, w, spare, _, _, _ = state
        again = tries > 0
        projected = _project_out(jnp.where(again, directions, w), basis, rows)
        w, spare = jnp.where(again, w, projected), jnp.where(again, projected, spare)
        return (tries + 1, w, spare) + _orthonormal_within(w, spare, threshold)

    def pending(state):
        tries, lost = state[0], state[-1]
        return (tries == 0) | ((tries == 1) & jnp.any(lost))

    b = w.shape[0]
    state = (0, w, jnp.zeros_like(w), jnp.zeros((b, b), w.dtype), jnp.zeros_like(w),
             jnp.zeros((b,), bool))
    _, _, _, r, q, _ = jax.lax.while_loop(pending, attempt, state)
    return r, q


# --- the recurrence --------------------------------------------------------------------------
def hashed_normal(key: Array, n: int, dtype) -> Array:
    """n pseudo-random numbers of zero mean and unit variance from a cheap integer hash of
    the key (a multiply-xorshift mix of the index and the key's bits, then the uniform
    mapped to [−√3, √3]). For start and restart directions, which only need to be generic:
    it compiles in a fraction of the time of `jax.random.normal` (threefry) on CPU. Entry i
    does not depend on n."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    seed = jnp.asarray(data, jnp.uint32).reshape(-1)
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + seed[0]
    for mult in (0x85EBCA6B, 0xC2B2AE35):
        h = (h ^ (h >> 16)) * jnp.uint32(mult) + seed[-1]
    h = h ^ (h >> 16)
    uniform = (h >> 8).astype(jnp.float32) * (1.0 / 2**24) + (0.5 / 2**24)
    return (math.sqrt(3.0) * (2.0 * uniform - 1.0)).astype(dtype)


def start_block(op: JacobianOperator, key: Array, block_size: int) -> Array:
    """The default start, b generic rows (b, n_in) from `hashed_normal`, drawn apart from the
    restart directions: for b = 1 the entries of `key` that follow them (n_out + n_in
    onwards), for b > 1 the first b · n_in entries of fold_in(key, 1). Two rules, each the
    start its run had before the single-vector and block recurrences were one (the saved
    reference values of `tests/test_reference.py` depend on both)."""
    if block_size == 1:
        return hashed_normal(key, op.n_out + 2 * op.n_in, op.dtype)[op.n_out + op.n_in:][None]
    return hashed_normal(jax.random.fold_in(key, 1), block_size * op.n_in,
                         op.dtype).reshape(block_size, op.n_in)


def _directions(g, j, b):
    """b restart directions for step j: the Gaussian vector g rolled by j·b + i."""
    return jnp.stack([jnp.roll(g, j * b + i) for i in range(b)])


def _ulps(dtype):
    return BREAKDOWN_ULPS * jnp.finfo(dtype).eps


def _products(op: JacobianOperator, vectors: Array, side: str) -> Array:
    """J v (side "J") or Jᵀ u (side "JT") for every row of `vectors` (b, n), batched."""
    fn = op.matvec if side == "J" else op.rmatvec
    if vectors.shape[0] == 1:
        return fn(vectors[0])[None]
    return jax.vmap(fn)(vectors)


def _gk_step(op, g_u, g_v, j, carry):
    """Step j (0-based): U_j A_j = J V_j − U_{j−1} C_{j−1}, V_{j+1} C_jᵀ = Jᵀ U_j − V_j A_jᵀ,
    each block orthogonalized against the earlier ones (`_next_rows`)."""
    us, vs, a, c, scale = carry
    b, ulps = a.shape[-1], _ulps(a.dtype)
    v = jax.lax.dynamic_slice_in_dim(vs, j * b, b, axis=0)
    jv = _products(op, v, "J")
    u_prev = jax.lax.dynamic_slice_in_dim(us, jnp.maximum(j - 1, 0) * b, b, axis=0)
    c_prev = jnp.where(j > 0, jax.lax.dynamic_index_in_dim(c, jnp.maximum(j - 1, 0),
                                                           keepdims=False), 0)
    r, u = _next_rows(jv - _combine(c_prev.T, u_prev), jnp.linalg.norm(jv, axis=-1), us, j * b,
                      scale, _directions(g_u, j, b), ulps)
    scale = jnp.maximum(scale, jnp.max(jnp.abs(r)))
    jtu = _products(op, u, "JT")
    rc, v_next = _next_rows(jtu - _combine(r, v), jnp.linalg.norm(jtu, axis=-1), vs, (j + 1) * b,
                            scale, _directions(g_v, j, b), ulps)
    scale = jnp.maximum(scale, jnp.max(jnp.abs(rc)))
    return (jax.lax.dynamic_update_slice_in_dim(us, u, j * b, axis=0),
            jax.lax.dynamic_update_slice_in_dim(vs, v_next, (j + 1) * b, axis=0),
            a.at[j].set(r), c.at[j].set(rc.T), scale)


def _gk_init(op, v0, nb, key):
    """Zero buffers for nb steps (rows padded to whole chunks), V_1 = the QR of the start
    block v0 (b, n_in) (`_orthonormal_within`), and one Gaussian restart vector per side,
    rolled by the vector's index (no random draws in the loop)."""
    b, dtype = v0.shape[0], op.dtype
    g = hashed_normal(key, op.n_out + op.n_in, dtype)
    g_u, g_v = g[:op.n_out], g[op.n_out:]
    v0 = jnp.asarray(v0, dtype)
    _, v1, _ = _orthonormal_within(v0, _directions(g_v, -1, b),
                                   _ulps(dtype) * jnp.linalg.norm(v0, axis=-1))
    pad = lambda rows: -(-rows // CHUNK) * CHUNK  # noqa: E731
    vs = jnp.zeros((pad((nb + 1) * b), op.n_in), dtype).at[:b].set(v1)
    carry = (jnp.zeros((pad(nb * b), op.n_out), dtype), vs, jnp.zeros((nb, b, b), dtype),
             jnp.zeros((nb, b, b), dtype), jnp.zeros((), dtype))
    return carry, g_u, g_v


def _bidiagonalization(carry, steps) -> Bidiagonalization:
    us, vs, a, c, _ = carry
    m = a.shape[0] * a.shape[-1]
    filled = (jnp.arange(m, dtype=jnp.int32) < steps)[:, None]
    nxt = jax.lax.dynamic_slice_in_dim(vs, steps, a.shape[-1], axis=0)
    return Bidiagonalization(a, c, steps, jnp.where(filled, vs[:m], 0),
                             jnp.where(filled, us[:m], 0), nxt)


def _as_block(op, v0, block_size):
    """v0 as a start block (b, n_in): None gives `start_block`'s; a vector is a block of one."""
    v0 = jnp.asarray(v0)
    v0 = v0[None] if v0.ndim == 1 else v0
    if v0.shape != (block_size, op.n_in):
        raise ValueError(f"the start must have shape (block_size, n_in) = ({block_size}, "
                         f"{op.n_in}) (or ({op.n_in},) for block_size 1), got {v0.shape}")
    return v0


def _fixed_run(op, v0, nb, key) -> Bidiagonalization:
    """nb steps from the start block v0 (b, n_in), no stopping rule."""
    carry, g_u, g_v = _gk_init(op, v0, nb, key)
    carry = jax.lax.fori_loop(0, nb, functools.partial(_gk_step, op, g_u, g_v), carry)
    return _bidiagonalization(carry, jnp.asarray(nb * v0.shape[0], jnp.int32))


def bidiagonalize_runs(op: JacobianOperator, starts: Array, max_steps: int, key: Array,
                       block_size: int = 1) -> Bidiagonalization:
    """p independent runs of ⌊max_steps / b⌋ steps (max_steps vectors) from the rows of
    `starts` (p, n_in) (or blocks (p, b, n_in)), vmapped: their products batched (the SLQ
    probes). Returns a `Bidiagonalization` with a leading p axis."""
    starts = jnp.asarray(starts)
    blocks = starts[:, None] if starts.ndim == 2 else starts
    if blocks.shape[1:] != (block_size, op.n_in):
        raise ValueError(f"the starts must have shape (p, n_in) for block_size 1 or (p, b, "
                         f"n_in) = (p, {block_size}, {op.n_in}), got {starts.shape}")
    return jax.vmap(lambda v: _fixed_run(op, v, max_steps // block_size, key))(blocks)


def certified_run(op: JacobianOperator, v0, max_steps: int, key: Array, k: int, rtol: float,
                  block_size: int = 1):
    """The stopping-rule run of `golub_kahan`: (Bidiagonalization, θ, r, bounds, tests), the
    top-k Ritz values θ, their residuals r and error bounds from the last test (the test
    after the last step). At most ⌊max_steps / b⌋ steps of b vectors. v0: the start, (n_in,)
    or (b, n_in), or None for `start_block`'s."""
    b = block_size
    nb = max_steps // b
    v0 = start_block(op, key, b) if v0 is None else _as_block(op, v0, b)
    carry, g_u, g_v = _gk_init(op, v0, nb, key)
    count = min(k + 6, nb * b)
    first = -(-(k + 1) // b)  # the first step with more vectors than k
    sizes = tuple(s for s in bucket_sizes(count, nb * b) if s % b == 0) or (nb * b,)
    iterations, carry, tests, (s, res, bounds) = stopping_loop(
        functools.partial(_gk_step, op, g_u, g_v),
        lambda carry, vectors: top_ritz(carry[2], carry[3], vectors, count, sizes),
        carry, nb, first, k, rtol, b, op.dtype)
    return _bidiagonalization(carry, iterations * b), s, res, bounds, tests


def golub_kahan(op: JacobianOperator, v0: Array | None, max_steps: int, key: Array, *,
                block_size: int = 1, k: int | None = None,
                rtol: float = 1e-6) -> Bidiagonalization:
    """Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization, b vectors a step.

    From V_1, the orthonormalized start block (b = 1: v₁ = v0/‖v0‖):
        U_j A_j = J V_j − U_{j−1} C_{j−1},    V_{j+1} C_jᵀ = Jᵀ U_j − V_j A_jᵀ
    (b = 1: α_j u_j = J v_j − β_{j−1} u_{j−1}, β_j v_{j+1} = Jᵀ u_j − α_j v_j), each new
    block orthogonalized twice against the earlier ones — only the rows filled so far, chunk
    by chunk, so a step costs 2b products and O(j · b² · n). When a coefficient falls to
    round-off level (an invariant subspace, e.g. J = I or rank J < steps) the recurrence
    continues from a random vector orthogonal to the basis, its coefficient set to 0; this
    keeps J V = U B and Jᵀ U = V Bᵀ + V_{s+1} C_sᵀ E_sᵀ exact.

    Stopping rule (when `k` is given): after each step the top-k Ritz values of B get the
    error bounds of `error_bounds` (residual, gap and cluster bounds); the run stops as soon
    as every bound is ≤ rtol · θ_i, or after max_steps vectors. Tests are scheduled from the
    observed convergence rate: with ρ = max_i bound_i / (rtol θ_i) falling by a factor e^c
    per step, the next test comes after ⌊(ln ρ / c) / 2⌋ steps (at least 1, at most j/8), so
    tests get denser as ρ nears 1 and the run overshoots the first certifiable step by
    little. A test costs the SVD of the leading 128 × 128 block of B (or all of B past 128
    vectors).

    Args:
      op: the operator (`jacobian_operator`): matvec (n_in,) → (n_out,), rmatvec back.
      v0: the start: (n_in,) for b = 1, or b rows (b, n_in), linearly independent; None:
        `start_block`'s generic one.
      max_steps: the most vectors (products with J), b ≤ max_steps ≤ min(n_in, n_out)
        (static); the run takes ⌊max_steps / b⌋ steps of b.
      key: PRNG key for the restart (and default start) vectors.
      block_size: b, vectors per step (static).
      k: stop early once the top k Ritz values are certified (None: run every step).
      rtol: relative error bound of the stopping rule.

    Returns:
      `Bidiagonalization` with both bases and the number of vectors done.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from isometry.linalg._jacobian import jacobian_operator
      >>> a = jnp.diag(jnp.arange(1.0, 21.0))
      >>> op = jacobian_operator(lambda x: a @ x, jnp.ones(20))
      >>> bd = golub_kahan(op, jnp.ones(20), 20, jax.random.key(0), k=3, rtol=1e-5)
      >>> [round(float(v), 3) for v in bd.ritz()[1][:3]]
      [20.0, 19.0, 18.0]
      >>> bd = golub_kahan(op, None, 20, jax.random.key(1), block_size=4)
      >>> int(bd.steps), [round(float(v), 3) for v in bd.ritz()[1][:3]]
      (20, [20.0, 19.0, 18.0])
    """
    n = min(op.n_in, op.n_out)
    if not 1 <= block_size <= max_steps <= n:
        raise ValueError(f"need 1 ≤ block_size ≤ max_steps ≤ min(n_in, n_out) = {n}, got "
                         f"block_size {block_size} and max_steps {max_steps}")
    if k is None:
        v0 = start_block(op, key, block_size) if v0 is None else _as_block(op, v0, block_size)
        return _fixed_run(op, v0, max_steps // block_size, key)
    if not 1 <= k <= max_steps // block_size * block_size:
        raise ValueError(f"k must be in [1, max_steps = {max_steps}], got {k}")
    return certified_run(op, v0, max_steps, key, k, rtol, block_size)[0]
