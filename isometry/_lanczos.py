"""Matrix-free spectra: Golub–Kahan bidiagonalization, top singular values, SLQ density, chi.

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

From the SVD B = P Σ Qᵀ:

* **Top singular values.** σ_i(B) ≤ σ_i(J) (B is J restricted to span V), and the Ritz
  triplet leaves the residual ‖Jᵀ(U p_i) − σ_i V q_i‖ = |β_m P_{m,i}|, so some singular value
  of J lies within that bound of σ_i(B); the gap to the neighbouring Ritz values squares it
  (`error_bounds`: r²/2δ for single values, the block residual over the gap for clusters).
  The run stops at the first step where these bounds certify the requested accuracy
  (`golub_kahan`'s stopping rule, `top_singular_values`). The largest values converge
  first: a few tens of steps beyond k give the top k to many digits unless they are
  clustered. Several runs (probes) are combined by taking the largest Ritz value at each
  rank (all are lower bounds).
* **Smallest singular value — an estimate only.** The smallest Ritz value is an upper bound
  on σ_min(J) and converges slowly: for a spread spectrum (n ≫ m) it can be orders of
  magnitude above the truth. Trust it only when its residual bound is small against it,
  or when m reaches the short side of J (then all values are exact).
* **Spectral density (stochastic Lanczos quadrature).** For a random unit probe v₁, Gauss
  quadrature with nodes σ_i(B) and weights (Q_{1,i})² reproduces v₁ᵀ f(JᵀJ) v₁ exactly for
  polynomials of degree < 2m; averaged over probes it estimates (1/n) Σ_j f(σ_j²). The
  density of log10 σ is that discrete measure smoothed by a Gaussian kernel (width
  `bandwidth` decades). Its bulk is accurate for σ within a few decades of σ_max; singular
  values far below σ_max · (round-off or 1/m²) are lumped into the lowest nodes.
* **chi (Hutchinson, deflated).** ‖J‖_F² = E‖J r‖² for Rademacher r (Hutchinson). With P
  the projector on the top run's Krylov basis V, ‖J‖_F² = ‖B‖_F² + E‖J (I − P) r‖²: the
  dominant directions count exactly, only the remainder is sampled (Hutch++, Meyer et al.
  2021), which keeps the error small for spectra with a few large σ. Standard error
  reported. Without a top run (`top_run=False`) each probe's own Krylov space deflates
  and the other probes sample the remainder, at no extra product (`_probe_deflated_chi`). `hutchinson_chi` is plain Hutchinson with JVPs alone (cheap enough for every
  training step).

Rectangular J: everything runs on the short side (JᵀJ or JJᵀ, whichever is smaller), so the
density describes the k = min(n_in, n_out) singular values, like the dense `Spectrum`.

References: Golub & Kahan (1965); Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via
stochastic Lanczos quadrature" (2017); Hutchinson (1989).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import ndtr

from isometry._jacobian import JacobianOperator, jacobian_operator
from isometry._spectrum import summarize

__all__ = [
    "Bidiagonalization",
    "LanczosSpectrum",
    "TopSingularValues",
    "error_bounds",
    "golub_kahan",
    "hutchinson_chi",
    "lanczos_spectrum",
    "top_singular_values",
]

Array = Any

#: Defaults: top singular values, most steps and tolerance of their run, steps per density
#: probe, density probes, chi probes, kernel width (decades).
DEFAULT_K = 10
DEFAULT_MAX_STEPS = 256
DEFAULT_RTOL = 1e-6
DEFAULT_NUM_STEPS = 64
DEFAULT_NUM_PROBES = 8
DEFAULT_CHI_PROBES = 64
DEFAULT_BANDWIDTH = 0.04
# A coefficient below this many ulps of the operator's scale is a breakdown.
_BREAKDOWN_ULPS = 64


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
        superdiag = jnp.where(jnp.arange(m - 1) < self.steps - 1, self.betas[:-1], 0)
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
_CHUNK = 16


def _project_out(w: Array, basis: Array, rows: Array) -> Array:
    """w minus its projection on the first `rows` rows of `basis`, twice (CGS2 by chunks).

    Args:
      w: vectors (p, n), one per independent run.
      basis: orthonormal rows (p, M, n), M a multiple of `_CHUNK`; rows ≥ `rows` are zero.
      rows: number of filled rows (traced); only ⌈rows / _CHUNK⌉ chunks are read.

    Each pass subtracts, chunk by chunk, h = B_c w then w ← w − B_cᵀ h (classical within a
    chunk, modified between chunks); the second pass removes what round-off left of the first
    ("twice is enough", Giraud et al. 2005).
    """
    nchunks = (rows + _CHUNK - 1) // _CHUNK

    def chunk(i, w):  # both passes in one loop: chunk i mod nchunks
        start = (i % jnp.maximum(nchunks, 1)) * _CHUNK
        block = jax.lax.dynamic_slice_in_dim(basis, start, _CHUNK, axis=1)  # (p, c, n)
        if w.shape[0] == 1:  # one run: plain matrix-vector products
            return w - ((block[0] @ w[0]) @ block[0])[None]
        h = jnp.einsum("pcn,pn->pc", block, w)
        return w - jnp.einsum("pc,pcn->pn", h, block)

    return jax.lax.fori_loop(0, 2 * nchunks, chunk, w)


def _hashed_normal(key: Array, n: int, dtype) -> Array:
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
    g = _hashed_normal(key, op.n_out + op.n_in, dtype)
    g_u, g_v = g[:op.n_out], g[op.n_out:]
    rows_u = -(-m // _CHUNK) * _CHUNK
    rows_v = -(-(m + 1) // _CHUNK) * _CHUNK
    vs = jnp.zeros((p, rows_v, op.n_in), dtype).at[:, 0].set(_unit(jnp.asarray(v0, dtype)))
    carry = (jnp.zeros((p, rows_u, op.n_out), dtype), vs, jnp.zeros((p, m), dtype),
             jnp.zeros((p, m), dtype), jnp.zeros((p,), dtype))
    return carry, g_u, g_v


def _bidiagonalization(carry, steps, m) -> Bidiagonalization:
    us, vs, alphas, betas, _ = carry
    filled = (jnp.arange(m) < steps)[:, None]
    nxt = jax.lax.dynamic_index_in_dim(vs, steps, axis=1, keepdims=False)
    return Bidiagonalization(alphas, betas, jnp.full((alphas.shape[0],), steps),
                             jnp.where(filled, vs[:, :m], 0), jnp.where(filled, us[:, :m], 0), nxt)


def _bidiagonalize_runs(op: JacobianOperator, v0: Array, num_steps: int, key: Array):
    """`num_steps` steps of p independent Golub–Kahan runs from the rows of v0 (p, n_in),
    their products batched (SLQ probes). Returns a `Bidiagonalization` with a leading p axis."""
    m = num_steps
    carry, g_u, g_v = _gk_init(op, v0, m, key)
    ulps = _BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    carry = jax.lax.fori_loop(0, m, functools.partial(_gk_step, op, g_u, g_v, ulps), carry)
    return _bidiagonalization(carry, jnp.asarray(m), m)


# --- Ritz values and their error bounds ------------------------------------------------------
def _bucket_sizes(count: int, m: int) -> tuple[int, ...]:
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
            sup = jnp.where(jnp.arange(s - 1) < steps - 1, betas[:s - 1], 0)
            p, sv, _ = jnp.linalg.svd(jnp.diag(alphas[:s]) + jnp.diag(sup, 1))
            last = jnp.minimum(steps, s) - 1
            res = jnp.abs(betas[steps - 1] * p[last, :])
            return sv[:count], res[:count]
        return svd

    index = jnp.sum(steps > jnp.asarray(sizes[:-1])) if len(sizes) > 1 else 0
    return jax.lax.switch(index, [leading(s) for s in sizes], alphas, betas, steps)


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
    idx = jnp.arange(count)
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
      >>> op = jacobian_operator(lambda x: a @ x, jnp.ones(n))
      >>> bd = golub_kahan(op, jnp.ones(n), 64, jax.random.key(0), k=5, rtol=1e-8)
      >>> _, s, _, res = bd.ritz()
    """
    m = num_steps
    if not 1 <= m <= min(op.n_in, op.n_out):
        raise ValueError(f"num_steps must be in [1, min(n_in, n_out) = {min(op.n_in, op.n_out)}], "
                         f"got {m}")
    if k is None:
        out = _bidiagonalize_runs(op, jnp.asarray(v0)[None], m, key)
        return jax.tree_util.tree_map(lambda a: a[0], out)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, num_steps = {m}], got {k}")
    return _golub_kahan_until(op, v0, m, key, k, rtol)[0]


def _golub_kahan_until(op, v0, m, key, k, rtol):
    """The stopping-rule run of `golub_kahan`: (Bidiagonalization, θ, r, bounds, tests), the
    top-k Ritz values θ, their residuals r and error bounds from the last test (the test
    after the last step). v0 None: a Gaussian start drawn with the restart directions."""
    if v0 is None:  # a generic start, drawn apart from the restart directions
        v0 = _hashed_normal(key, op.n_out + 2 * op.n_in, op.dtype)[-op.n_in:]
    carry, g_u, g_v = _gk_init(op, jnp.asarray(v0)[None], m, key)
    ulps = _BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    step = functools.partial(_gk_step, op, g_u, g_v, ulps)
    count = min(k + 6, m)
    sizes = _bucket_sizes(count, m)

    def test(state):
        j, carry, _, last_j, last_log, _, tests, _ = state
        _, _, alphas, betas, _ = carry
        s, res = _top_ritz(alphas[0], betas[0], j, count, sizes)
        ratio, bounds = _stop_ratio(s, res, j, k, rtol)
        log_ratio = jnp.log(jnp.maximum(ratio, jnp.finfo(op.dtype).tiny))
        rate = (last_log - log_ratio) / jnp.maximum(j - last_j, 1)
        ahead = jnp.where((last_j > 0) & (rate > 0), log_ratio / rate, jnp.inf)
        interval = jnp.clip(jnp.floor(ahead / 2), 1, jnp.maximum(j // 8, 1)).astype(j.dtype)
        return (j, carry, jnp.minimum(j + interval, m), j, log_ratio, log_ratio <= 0, tests + 1,
                (s[:k], res[:k], bounds))

    def body(state):
        j, carry, next_test, last_j, last_log, done, tests, found = state
        carry = step(j, carry)
        state = (j + 1, carry, next_test, last_j, last_log, done, tests, found)
        return jax.lax.cond(j + 1 >= next_test, test, lambda s: s, state)

    def unfinished(state):
        j, _, _, _, _, done, _, _ = state
        return (j < m) & ~done

    zero = jnp.zeros((), jnp.int32)
    nothing = (jnp.zeros((k,), op.dtype),) * 3
    state = (zero, carry, jnp.asarray(min(k + 1, m), jnp.int32), zero,
             jnp.zeros((), op.dtype), jnp.zeros((), bool), zero, nothing)
    steps, carry, _, _, _, _, tests, (s, res, bounds) = jax.lax.while_loop(unfinished, body, state)
    out = jax.tree_util.tree_map(lambda a: a[0], _bidiagonalization(carry, steps, m))
    return out, s, res, bounds, tests


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TopSingularValues:
    """The largest singular values of J from `top_singular_values`, with their certificates.

    Leading batch axes are kept (under `vmap`).

    Attributes:
      singular_values: θ_1 ≥ … ≥ θ_k, Ritz values: lower bounds on σ_1..σ_k, (..., k).
      error_bounds: σ_i − θ_i ≤ error_bounds_i (`error_bounds`: residual, gap and cluster
        bounds; round-off of the products, ≈ eps · σ_1, not included), (..., k).
      residual_bounds: the plain residuals |β_s P_{s,i}| (a singular value of J lies within
        each of θ_i), (..., k).
      converged: whether every error bound is ≤ rtol · θ_i, (...).
      steps: Golub–Kahan steps taken: 2 · steps products with J or Jᵀ, (...).
    """

    singular_values: Array
    error_bounds: Array
    residual_bounds: Array
    converged: Array
    steps: Array

    @property
    def relative_error_bounds(self) -> Array:
        """error_bounds / singular_values."""
        return self.error_bounds / self.singular_values


def top_singular_values(fn: Callable, x: Any, k: int = DEFAULT_K, rtol: float = DEFAULT_RTOL, *,
                        max_steps: int = DEFAULT_MAX_STEPS, key: Array | None = None
                        ) -> TopSingularValues:
    """The k largest singular values of J = ∂fn(x)/∂x, matrix-free, certified to rtol.

    One Golub–Kahan run (`golub_kahan`, products from `jacobian_operator`, on the short side
    of J) from a Gaussian start, stopped by its rule as soon as every top-k error bound is
    ≤ rtol · θ_i (or after `max_steps` steps). No density, no chi: the cheapest way to σ_1..σ_k.
    Jittable and vmappable (wrap it: `jax.jit(lambda x: top_singular_values(fn, x))`).

    Cost: one forward pass, 2 · steps products (J v, Jᵀ u) and O(steps² · n) for the
    reorthogonalization; memory: 2 · max_steps vectors.

    Args:
      fn: `x -> y`, arrays or pytrees of floating arrays.
      x: the point at which J is taken.
      k: how many singular values.
      rtol: relative accuracy to certify: σ_i − θ_i ≤ rtol · θ_i. In float32 ask for
        rtol ≳ 1e-6 · σ_1/σ_k (round-off of the products is not in the bound).
      max_steps: the most steps (capped at min(n_in, n_out), where all σ are exact).
      key: PRNG key for the start and restart vectors (default `PRNGKey(0)`).

    Returns:
      `TopSingularValues`; check `converged` (False: `max_steps` ran out first).

    Example:
      >>> top = iso.top_singular_values(lambda x: jnp.tanh(w @ x), x, k=10)
      >>> top.singular_values, top.error_bounds, top.converged
    """
    op = jacobian_operator(fn, x)
    if op.n_out < op.n_in:
        op = _transposed(op)
    m = min(max_steps, op.n_in)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, min(max_steps, n) = {m}], got {k}")
    key = jax.random.key(0) if key is None else key
    out, s, res, bounds, _ = _golub_kahan_until(op, None, m, key, k, rtol)
    return TopSingularValues(singular_values=s, error_bounds=bounds, residual_bounds=res,
                             converged=jnp.all(bounds <= rtol * s), steps=out.steps)


def _hutchinson(tangents: Array) -> tuple[Array, Array]:
    """Mean of ‖J r_p‖² over the probes (axis 0 of `tangents` = J r_p) and its standard error."""
    p = tangents.shape[0]
    samples = jnp.sum(jnp.square(tangents.reshape(p, -1)), axis=-1)
    err = (jnp.std(samples, ddof=1) / math.sqrt(p) if p > 1
           else jnp.full((), jnp.inf, samples.dtype))
    return jnp.mean(samples), err


def _transposed(op: JacobianOperator) -> JacobianOperator:
    return JacobianOperator(op.rmatvec, op.matvec, op.n_out, op.n_in, op.dtype)


def _rademacher(key: Array, shape: tuple[int, ...], dtype) -> Array:
    return jax.random.rademacher(key, shape, dtype=dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanczosSpectrum:
    """Matrix-free spectrum of J: top singular values, an SLQ density of log10 σ, and chi.

    Same statistics API as `Spectrum` where it makes sense; leading batch axes are kept.
    Fields with a trailing probe axis p and step axis m hold the quadrature of each probe.

    Attributes:
      singular_values: the top k Ritz values, descending (lower bounds on σ_1..σ_k), (..., k).
      residual_bounds: error bounds σ_i(J) − θ_i ≤ bound (`error_bounds`: the residual
        |β_m P_{m,i}| refined by the Ritz-value gaps), (..., k).
      sigma_min_estimate: the smallest Gauss node over the probes: an upper bound on σ_min,
        often far above it (the density's lowest node), (...).
      sigma_min_residual: its residual bound, (...).
      chi: Hutchinson estimate of ‖J‖_F²/n_in, (...).
      chi_stderr: its standard error over the probes, (...).
      nodes: Gauss nodes σ_i(B) of every probe, (..., p, m).
      weights: their quadrature weights (each probe's sum to 1), (..., p, m).
      n_nonfinite: number of non-finite bidiagonal coefficients (0 when J v is finite), (...).
      n_in, n_out: sizes of J (static).
      bandwidth: Gaussian kernel width of the density, in decades of σ (static).
    """

    singular_values: Array
    residual_bounds: Array
    sigma_min_estimate: Array
    sigma_min_residual: Array
    chi: Array
    chi_stderr: Array
    nodes: Array
    weights: Array
    n_nonfinite: Array
    n_in: int = dataclasses.field(metadata=dict(static=True))
    n_out: int = dataclasses.field(metadata=dict(static=True))
    bandwidth: float = dataclasses.field(default=DEFAULT_BANDWIDTH, metadata=dict(static=True))

    # --- statistics (reduce over the trailing probe and node axes, keep batch axes) --------
    def _log_nodes(self) -> Array:
        s = self.nodes
        return jnp.log(jnp.maximum(s, jnp.finfo(s.dtype).tiny))

    def _expect(self, values: Array) -> Array:
        """E[f(σ)] under the SLQ measure: mean over probes of Σ_i w_i f(σ_i)."""
        return jnp.mean(jnp.sum(self.weights * values, axis=-1), axis=-1)

    @property
    def log_singular_values(self) -> Array:
        """Natural log of the top-k singular values."""
        return jnp.log(self.singular_values)

    @property
    def mean_log(self) -> Array:
        """SLQ estimate of the mean of ln σ over all k singular values (σ = 0 clipped to tiny)."""
        return self._expect(self._log_nodes())

    @property
    def std_log(self) -> Array:
        """SLQ estimate of the standard deviation of ln σ."""
        log = self._log_nodes()
        var = self._expect(jnp.square(log)) - jnp.square(self._expect(log))
        return jnp.sqrt(jnp.maximum(var, 0.0))

    @property
    def sigma_max(self) -> Array:
        """Largest singular value (converged to round-off in a few tens of steps)."""
        return self.singular_values[..., 0]

    @property
    def sigma_min(self) -> Array:
        """Smallest singular value, APPROXIMATE: an upper bound (see `sigma_min_estimate`)."""
        return self.sigma_min_estimate

    @property
    def condition_number(self) -> Array:
        """σ_max / σ_min with the approximate σ_min: a lower bound on the true condition number."""
        return self.sigma_max / self.sigma_min

    @property
    def isometry_share(self) -> Array:
        """Share of σ in `ISOMETRY_BAND` = [0.5, 2], from the smoothed SLQ density."""
        from isometry._spectrum import ISOMETRY_BAND

        lo, hi = (math.log10(b) for b in ISOMETRY_BAND)
        x = jnp.log10(jnp.maximum(self.nodes, jnp.finfo(self.nodes.dtype).tiny))
        h = self.bandwidth
        return self._expect(ndtr((hi - x) / h) - ndtr((lo - x) / h))

    def converged(self, rtol: float = 1e-4) -> Array:
        """Which top singular values are certified: residual bound ≤ rtol · σ_i, (..., k).

        The residual bounds are those of the computed B: they do not include the round-off of
        the products themselves, about eps · σ_max (≈ 1e-7 relative in float32), so ask for
        rtol above that.
        """
        return self.residual_bounds <= rtol * self.singular_values

    def histogram(self, bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                  density: bool = True):
        """Smoothed SLQ density of log10 σ integrated over bins, pooled over the batch (numpy).

        Each Gauss node contributes its weight spread by a Gaussian of width `bandwidth`
        decades, integrated exactly over every bin.

        Args:
          bins: number of bins or bin edges.
          range: (lo, hi) in log10 σ; defaults to the nodes' range ± 3 bandwidths.
          density: normalize to a probability density over the range; else expected counts
            (weights × k singular values per spectrum).

        Returns:
          (values, edges) as numpy arrays, like `numpy.histogram`.
        """
        s = np.asarray(self.nodes, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        n_probes = s.shape[-2]
        x = np.log10(np.clip(s, np.finfo(np.float64).tiny, None)).ravel()
        w = w.ravel() / n_probes
        h = self.bandwidth
        if np.ndim(bins) == 0:
            if range is None:
                heavy = w > 1e-6 * w.max()
                range = (x[heavy].min() - 3 * h, x[heavy].max() + 3 * h)
            edges = np.linspace(range[0], range[1], int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
        from scipy.special import ndtr as np_ndtr

        cdf = np_ndtr((edges[None, :] - x[:, None]) / h)  # (nodes, edges)
        mass = w @ np.diff(cdf, axis=1)
        if density:
            return mass / (mass.sum() * np.diff(edges)), edges
        return mass * min(self.n_in, self.n_out), edges

    def summary(self) -> dict[str, Any]:
        """The statistics as plain Python floats (lists for a batch): the keys of `Spectrum`."""
        return summarize(self)


def lanczos_spectrum(fn: Callable, x: Any, key: Array, *, k: int = DEFAULT_K,
                     max_steps: int = DEFAULT_MAX_STEPS, rtol: float = DEFAULT_RTOL,
                     num_steps: int = DEFAULT_NUM_STEPS, num_probes: int = DEFAULT_NUM_PROBES,
                     chi_probes: int = DEFAULT_CHI_PROBES,
                     bandwidth: float = DEFAULT_BANDWIDTH, top_run: bool = True) -> LanczosSpectrum:
    """Matrix-free spectrum of J = ∂fn(x)/∂x: top-k σ, SLQ density of log10 σ, Hutchinson chi.

    Two kinds of Golub–Kahan runs on the short side of J (`jacobian_operator` products):

    * top k: one run from a random start until the top k error bounds are ≤ rtol · σ_i
      (the stopping rule of `golub_kahan`) or `max_steps` steps;
    * density: `num_probes` runs of `num_steps` steps from Rademacher probes, vmapped so
      the products of all probes are batched;
    * chi: ‖B‖_F² of the top run plus Hutchinson with `chi_probes` probes projected off its
      Krylov basis (one JVP each).

    Cost: one forward pass plus (steps of the top run + num_probes × num_steps) products J v
    and Jᵀ u, and O(steps² · n) for reorthogonalization; memory: that many vectors of n.
    Jittable and vmappable (`spectrum_fn(method="lanczos")` calls it).

    Args:
      fn: `x -> y`, arrays or pytrees of floating arrays.
      x: the point at which J is taken.
      key: PRNG key for the probes.
      k: number of top singular values to report.
      max_steps: the most steps of the top-k run (capped at min(n_in, n_out), where all σ
        are exact).
      rtol: stopping rule of the top-k run: error bound ≤ rtol · σ_i.
      num_steps: m, GK steps per density probe (capped like max_steps).
      num_probes: p, random probes for the density.
      chi_probes: Rademacher probes of the deflated Hutchinson estimate of chi (one JVP
        each, batched; ≥ 2 for a standard error).
      bandwidth: kernel width of the density in decades of σ.
      top_run: False skips the top-k run (density and chi only, at the cost of the probes):
        the top k are then the largest Ritz values over the probes at each rank, with their
        error bounds (uncertified at `rtol`), and chi is deflated by the probes' own Krylov
        spaces (`_probe_deflated_chi`) instead of the top run's.

    Returns:
      `LanczosSpectrum`. Check `converged()` (or `residual_bounds`) before trusting the top
      k; `sigma_min` is an upper-bound estimate only.

    Example:
      >>> spec = lanczos_spectrum(lambda x: jnp.tanh(w @ x), x, jax.random.key(0))
      >>> spec.sigma_max, spec.residual_bounds[0], spec.chi
    """
    op = jacobian_operator(fn, x)
    n_in, n_out = op.n_in, op.n_out
    if n_out < n_in:
        op = _transposed(op)  # the short side: JJᵀ has no extra zero eigenvalues
    n_short = op.n_in
    m, m_top = min(num_steps, n_short), min(max_steps, n_short)
    if not 1 <= k <= m_top:
        raise ValueError(f"k must be in [1, min(max_steps, n) = {m_top}], got {k}")
    if min(num_probes, chi_probes if top_run else chi_probes + 1, m) < 1 or (
            not top_run and num_probes + chi_probes < 2):
        raise ValueError(f"num_probes, chi_probes and num_steps must be positive (without the "
                         f"top run chi_probes may be 0 with 2 or more probes), got "
                         f"{num_probes}, {chi_probes}, {num_steps}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    # One Rademacher draw for the density probes and the chi probes (one threefry compiled).
    probe_key, restart_key = jax.random.split(key)
    draws = _rademacher(probe_key, (num_probes + chi_probes, n_short), op.dtype)
    probes, r = draws[:num_probes], draws[num_probes:]

    # Density and chi: Gauss quadrature of every probe (the runs' products batched).
    bidiag = _bidiagonalize_runs(op, probes, m, jax.random.fold_in(restart_key, 1))
    _, nodes, qt, residuals = jax.vmap(Bidiagonalization.ritz)(bidiag)
    weights = jnp.square(qt[:, :, 0])
    low = jnp.argmin(nodes[:, -1])  # every probe's smallest node is an upper bound on σ_min

    if top_run:
        # Top k: one run with the stopping rule (as `top_singular_values`).
        top, s_top, _, bounds_top, _ = _golub_kahan_until(op, None, m_top, restart_key, k, rtol)
        # chi, deflated Hutchinson (Hutch++): with P the projector on the top run's span V,
        # ‖J‖_F² = ‖J P‖_F² + ‖J (I − P)‖_F², where ‖J P‖_F² = ‖B‖_F² exactly (J V = U B) and
        # the remainder, without the dominant directions, is sampled with the projected probes.
        q = top.right_vectors
        rest = jax.vmap(op.matvec)(r - (r @ q.T) @ q)
        frob, err = _hutchinson(rest)
        frob = frob + jnp.sum(jnp.square(top.matrix()))
    else:
        count = min(k, m)
        bounds = jax.vmap(lambda s, res: error_bounds(s, res))(nodes, residuals)[:, :count]
        best = jnp.argmax(nodes[:, :count], axis=0)  # the largest Ritz value at each rank
        s_top = jnp.take_along_axis(nodes[:, :count], best[None], axis=0)[0]
        bounds_top = jnp.take_along_axis(bounds, best[None], axis=0)[0]
        frob, err = _probe_deflated_chi(bidiag, probes, r, jax.vmap(op.matvec)(r))
    n_bad = sum(jnp.sum(~jnp.isfinite(a)) for a in (bidiag.alphas, bidiag.betas, s_top, frob))
    return LanczosSpectrum(
        singular_values=s_top, residual_bounds=bounds_top,
        sigma_min_estimate=nodes[low, -1], sigma_min_residual=residuals[low, -1],
        chi=frob / n_in, chi_stderr=err / n_in,
        nodes=nodes, weights=weights, n_nonfinite=n_bad.astype(jnp.int32),
        n_in=n_in, n_out=n_out, bandwidth=float(bandwidth))


def _probe_deflated_chi(bidiag: Bidiagonalization, probes: Array, extra: Array,
                        extra_products: Array) -> tuple[Array, Array]:
    """‖J‖_F² deflated by each probe's own Krylov space, sampled by the other probes.

    With Π_p the projector on span V_p of probe p (m steps), ‖J‖_F² = ‖B_p‖_F² + ‖J(I − Π_p)‖_F²
    (J V_p = U_p B_p). The remainder is sampled (Hutchinson) with vectors z independent of
    V_p: the other probes' starts r_q (J r_q = ‖r_q‖ α_1^q u_1^q is already known: no new
    product) and the `extra` probes (their products J z given), using
    J(I − Π_p) z = J z − U_p B_p (V_p z). The estimate is the mean over p; its standard
    error is taken as if the p estimates were fully correlated (conservative).

    Args:
      bidiag: the probes' runs (leading probe axis p), started from `probes` (p, n).
      probes: the Rademacher starts (p, n).
      extra: further Rademacher probes (s, n), possibly s = 0.
      extra_products: J z for them, (s, n_out).

    Returns:
      (estimate of ‖J‖_F², its standard error).
    """
    p = probes.shape[0]
    b = jax.vmap(Bidiagonalization.matrix)(bidiag)  # (p, m, m)
    exact = jnp.sum(jnp.square(b), axis=(1, 2))
    j_probes = (jnp.linalg.norm(probes, axis=-1) * bidiag.alphas[:, 0])[:, None] * bidiag.left_vectors[:, 0]
    z = jnp.concatenate([probes, extra])
    jz = jnp.concatenate([j_probes, extra_products])
    coef = jnp.einsum("pmn,sn->psm", bidiag.right_vectors, z)
    rest = jz[None] - jnp.einsum("pkn,psk->psn", bidiag.left_vectors,
                                 jnp.einsum("pkm,psm->psk", b, coef))
    samples = jnp.sum(jnp.square(rest), axis=-1)  # (p, s_all)
    valid = jnp.arange(z.shape[0])[None, :] != jnp.arange(p)[:, None]  # not the run's own start
    count = jnp.sum(valid, axis=1)
    mean = jnp.sum(jnp.where(valid, samples, 0), axis=1) / count
    var = jnp.sum(jnp.where(valid, jnp.square(samples - mean[:, None]), 0), axis=1) / (count - 1)
    return jnp.mean(exact + mean), jnp.sqrt(jnp.mean(var / count))


def hutchinson_chi(fn: Callable, x: Any, key: Array, num_probes: int = 16):
    """chi = ‖J‖_F²/n_in of every output leaf of fn from JVPs alone (Hutchinson).

    ‖J‖_F² = E‖J r‖² for Rademacher r (E[r rᵀ] = I): one forward pass carrying `num_probes`
    tangents, no transpose, cheap enough to log every training step. For a function returning
    a list of hidden states [x_0, …, x_L], one pass gives chi_l of every ∂x_l/∂x_0.

    Args:
      fn: `x -> y`, y an array or a pytree of arrays.
      x: the input (array or pytree, n_in entries in all).
      key: PRNG key.
      num_probes: number of Rademacher tangents (≥ 2 for a standard error).

    Returns:
      (chi, stderr): pytrees shaped like fn's output with a scalar per leaf. The relative
      standard error is about √(2 Σ_{i≠j} (JᵀJ)_{ij}²) / (‖J‖_F² √num_probes).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    x_flat, unravel = ravel_pytree(x)
    n_in = x_flat.size
    probes = _rademacher(key, (num_probes, n_in), x_flat.dtype)
    tangents = jax.vmap(lambda r: jax.jvp(fn, (x,), (unravel(r),))[1])(probes)

    def chi_of(t):
        frob, err = _hutchinson(t)
        return frob / n_in, err / n_in

    pairs = jax.tree_util.tree_map(chi_of, tangents)
    chi = jax.tree_util.tree_map(lambda p: p[0], pairs, is_leaf=lambda t: isinstance(t, tuple))
    err = jax.tree_util.tree_map(lambda p: p[1], pairs, is_leaf=lambda t: isinstance(t, tuple))
    return chi, err
