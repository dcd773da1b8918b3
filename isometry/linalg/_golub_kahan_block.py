"""Block Golub–Kahan–Lanczos bidiagonalization: b products per step, batched.

From V_1 (n_in × b, orthonormal columns), step j computes the QR factorizations

    U_j A_j = J V_j − U_{j−1} C_{j−1},        V_{j+1} C_jᵀ = Jᵀ U_j − V_j A_jᵀ,

A_j upper and C_j lower triangular (b × b). After s steps, with V = [V_1 … V_s] and
U = [U_1 … U_s] (s·b orthonormal columns each) and B block upper-bidiagonal (A_j on the
diagonal, C_j to its right; a band of b superdiagonals):

    J V = U B,        Jᵀ U = V Bᵀ + V_{s+1} C_sᵀ E_sᵀ,

E_s the last b columns of the identity. For b = 1 this is `golub_kahan` (A_j = α_j,
C_j = β_j). A Ritz triplet (θ_i, U p_i, V q_i) of B = P Σ Qᵀ is exact on the J side and
leaves ‖C_sᵀ E_sᵀ p_i‖ on the Jᵀ side, so `error_bounds` certifies the top k as for b = 1.

Why blocks: the b products of a step are one batched product (`vmap`: matrix–matrix), which
reads the weights of J once. Where the products are memory-bound (dense layers of width
~1,000 on a CPU) b = 16 of them cost about 2.5× one, and a block wider than a cluster of top
values converges at the rate of the gap below the block, not of the gaps inside it.

Every block is re-orthogonalized against all earlier vectors (classical Gram–Schmidt, twice,
by chunks of the filled rows), then within itself row by row (twice); a row at round-off
level (rank J V_j < b, an invariant subspace) gets coefficient 0 and a random direction
orthogonal to everything before it, so the relations stay exact.

Reference: Golub, Luk & Overton (1981), "A block Lanczos method for computing the singular
values and corresponding singular vectors of a matrix".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from isometry.linalg._golub_kahan import (BREAKDOWN_ULPS, CHUNK, bucket_index, bucket_sizes,
                                   hashed_normal, stopping_loop, sweep_chunks)
from isometry.linalg._jacobian import JacobianOperator

__all__ = ["BlockBidiagonalization", "auto_block_size", "block_golub_kahan",
           "certified_block_run", "product_intensity"]

Array = Any

#: Flops per byte of a product's stored arrays below which products are memory-bound and the
#: top run takes blocks (a CPU core does a few flops per byte of memory traffic; the dense
#: layers of `models.FullyConnected` do 0.5, a Transformer of 64 tokens about 28).
MEMORY_BOUND_INTENSITY = 4.0
#: The block size of a memory-bound operator, and the fewest block steps its budget must allow
#: (a block run needs up to twice the vectors of a single one: FC 16×1024 at b = 4 takes 148
#: where one vector per step takes 102, at b = 8 200 of the default 256).
AUTO_BLOCK = 8
MIN_BLOCK_STEPS = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockBidiagonalization:
    """The block upper-bidiagonal B of J from `block_golub_kahan`, with both Krylov bases.

    With b the block size and M = max_steps · b, buffers are static; after s = `steps` block
    steps only the first s blocks (s·b vectors) are filled, the rest are 0.

    Attributes:
      diagonal: A_1..A_M/b, upper-triangular blocks, (M/b, b, b).
      superdiagonal: C_1..C_M/b, lower-triangular; C_s couples to V_{s+1}, (M/b, b, b).
      steps: block steps done, an int array.
      right_vectors: the columns of V as rows (zero beyond s·b), (M, n_in).
      left_vectors: the columns of U as rows, (M, n_out).
      next_vectors: V_{s+1} as rows, (b, n_in).
    """

    diagonal: Array
    superdiagonal: Array
    steps: Array
    right_vectors: Array
    left_vectors: Array
    next_vectors: Array

    def matrix(self) -> Array:
        """B as a dense (M, M) array (zero beyond s·b: extra zero singular values)."""
        return _block_matrix(self.diagonal, self.superdiagonal, self.steps)

    def ritz(self):
        """(P, σ, Qᵀ, residuals): the SVD B = P diag(σ) Qᵀ, σ descending, and the residual
        bounds ‖C_sᵀ E_sᵀ p_i‖ of the Ritz triplets."""
        p, s, qt = jnp.linalg.svd(self.matrix())
        return p, s, qt, _residuals(p, self.superdiagonal, self.steps)


def _block_matrix(diagonal, superdiagonal, steps):
    nb, b, _ = diagonal.shape
    j = jnp.arange(nb, dtype=jnp.int32)
    a = jnp.where((j < steps)[:, None, None], diagonal, 0)
    c = jnp.where((j < steps - 1)[:, None, None], superdiagonal, 0)
    eye = jnp.eye(nb, dtype=diagonal.dtype)
    dense = (jnp.einsum("jab,jk->jakb", a, eye)
             + jnp.einsum("jab,jk->jakb", c, jnp.eye(nb, k=1, dtype=diagonal.dtype)))
    return dense.reshape(nb * b, nb * b)


def _residuals(p, superdiagonal, steps):
    """‖C_sᵀ p_i[rows of block s]‖ for every column p_i of P (P's rows: the s·b vectors)."""
    b = superdiagonal.shape[-1]
    last = jax.lax.dynamic_slice_in_dim(p, (steps - 1) * b, b, axis=0)  # (b, columns)
    coupling = jax.lax.dynamic_index_in_dim(superdiagonal, steps - 1, keepdims=False)
    return jnp.linalg.norm(coupling.T @ last, axis=0)


def _project_out(w: Array, basis: Array, rows: Array) -> Array:
    """The rows of w (b, n) minus their projections on the first `rows` rows of `basis`
    (M, n), twice: classical Gram–Schmidt by chunks of `CHUNK` rows (only the filled ones)."""
    return sweep_chunks(w, basis, rows, 0, lambda w, block: w - (w @ block.T) @ block)


def _orthonormal_rows(w, basis, rows, scale, directions, ulps):
    """QR of the block w (b, n) orthogonal to basis[:rows]: (R, Q), w = Rᵀ Q, Q's rows
    orthonormal and ⟂ the basis, R upper triangular.

    The rows of w and of `directions` are projected off the basis together (`_project_out`:
    2b rows, the basis read once), then w is orthonormalized row by row against the rows
    before it (twice: modified Gram–Schmidt within the block). A row whose remainder is at
    round-off level (≤ ulps · max(‖w_i‖, scale): the block has lost rank, an invariant
    subspace) gets R_ii = 0 and, as Q's row i, its direction made orthogonal to the rows
    before it; the rows after it are orthogonalized against that row in turn, so w = Rᵀ Q
    stays exact. One pass, no second one to compile.
    """
    b = w.shape[0]
    threshold = ulps * jnp.maximum(jnp.linalg.norm(w, axis=-1), scale)
    both = _project_out(jnp.concatenate([w, directions]), basis, rows)
    idx = jnp.arange(b, dtype=jnp.int32)
    tiny = jnp.finfo(w.dtype).tiny

    def column(i, carry):
        q, r = carry
        earlier = idx < i

        pair = jnp.stack([both[i], both[b + i]])  # the row and its direction, minus their
        coef = jnp.zeros((2, b), q.dtype)          # projections on q_{<i}, twice
        for _ in range(2):
            h = jnp.where(earlier, pair @ q.T, 0)
            pair, coef = pair - h @ q, coef + h
        (row, spare), coef = pair, coef[0]
        norm = jnp.linalg.norm(row)
        lost = norm <= threshold[i]
        new = jnp.where(lost, spare / jnp.maximum(jnp.linalg.norm(spare), tiny),
                        row / jnp.maximum(norm, tiny))
        return q.at[i].set(new), r.at[:, i].set(coef.at[i].set(jnp.where(lost, 0, norm)))

    q, r = jax.lax.fori_loop(0, b, column, (jnp.zeros_like(w), jnp.zeros((b, b), w.dtype)))
    return r, q


def _directions(g, j, b):
    """b restart directions for block step j: the Gaussian vector g rolled by j·b + i."""
    return jnp.stack([jnp.roll(g, j * b + i) for i in range(b)])


def _block_step(op, g_u, g_v, ulps, j, carry):
    """Block step j (0-based): U_j A_j = J V_j − U_{j−1} C_{j−1}, V_{j+1} C_jᵀ = Jᵀ U_j − V_j A_jᵀ."""
    us, vs, a, c, scale = carry
    b = a.shape[-1]
    v = jax.lax.dynamic_slice_in_dim(vs, j * b, b, axis=0)
    jv = jax.vmap(op.matvec)(v)
    u_prev = jax.lax.dynamic_slice_in_dim(us, jnp.maximum(j - 1, 0) * b, b, axis=0)
    c_prev = jnp.where(j > 0, jax.lax.dynamic_index_in_dim(c, jnp.maximum(j - 1, 0),
                                                           keepdims=False), 0)
    r, u = _orthonormal_rows(jv - c_prev.T @ u_prev, us, j * b, scale, _directions(g_u, j, b), ulps)
    scale = jnp.maximum(scale, jnp.max(jnp.abs(r)))
    jtu = jax.vmap(op.rmatvec)(u)
    rc, v_next = _orthonormal_rows(jtu - r @ v, vs, (j + 1) * b, scale, _directions(g_v, j, b), ulps)
    scale = jnp.maximum(scale, jnp.max(jnp.abs(rc)))
    return (jax.lax.dynamic_update_slice_in_dim(us, u, j * b, axis=0),
            jax.lax.dynamic_update_slice_in_dim(vs, v_next, (j + 1) * b, axis=0),
            a.at[j].set(r), c.at[j].set(rc.T), scale)


def _init(op, v0, nb, b, key):
    """Buffers (rows padded to whole chunks), V_1 = the orthonormalized start block (its rows
    linearly independent), and one Gaussian restart vector per side."""
    dtype = op.dtype
    g = hashed_normal(key, op.n_out + op.n_in, dtype)
    g_u, g_v = g[:op.n_out], g[op.n_out:]
    pad = lambda rows: -(-rows // CHUNK) * CHUNK
    v1 = jnp.linalg.qr(jnp.asarray(v0, dtype).T)[0].T  # Householder QR of the start block
    vs = jnp.zeros((pad((nb + 1) * b), op.n_in), dtype).at[:b].set(v1)
    carry = (jnp.zeros((pad(nb * b), op.n_out), dtype), vs,
             jnp.zeros((nb, b, b), dtype), jnp.zeros((nb, b, b), dtype), jnp.zeros((), dtype))
    return carry, g_u, g_v


def _result(carry, steps, nb, b) -> BlockBidiagonalization:
    us, vs, a, c, _ = carry
    m = nb * b
    filled = (jnp.arange(m, dtype=jnp.int32) < steps * b)[:, None]
    nxt = jax.lax.dynamic_slice_in_dim(vs, steps * b, b, axis=0)
    return BlockBidiagonalization(a, c, steps, jnp.where(filled, vs[:m], 0),
                                  jnp.where(filled, us[:m], 0), nxt)


def _top_ritz(a, c, steps, count, sizes):
    """Top `count` Ritz values of B_s and their residual bounds, from the SVD of the
    smallest leading block of B in `sizes` (vectors) that holds s·b."""
    b = a.shape[-1]

    def leading(size):
        def svd(a, c, steps):
            nb = size // b
            p, sv, _ = jnp.linalg.svd(_block_matrix(a[:nb], c[:nb], steps))
            return sv[:count], _residuals(p, c, steps)[:count]
        return svd

    return jax.lax.switch(bucket_index(steps * b, sizes), [leading(s) for s in sizes], a, c, steps)


def certified_block_run(op: JacobianOperator, v0, max_steps: int, block_size: int, key: Array,
                        k: int, rtol: float):
    """Block Golub–Kahan with the stopping rule of `golub_kahan` (`stopping_loop`, its tests
    counted in block steps): stop once the top-k error bounds are ≤ rtol · θ_i, or after
    max_steps // b steps.

    Returns (BlockBidiagonalization, θ, residuals, error bounds, tests) for the top k.
    v0: the start block (b, n_in), or None for a Gaussian one.
    """
    b = block_size
    nb = max_steps // b
    if v0 is None:
        v0 = hashed_normal(jax.random.fold_in(key, 1), b * op.n_in, op.dtype).reshape(b, op.n_in)
    carry, g_u, g_v = _init(op, v0, nb, b, key)
    ulps = BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    count = min(k + 6, nb * b)
    first = -(-(k + 1) // b)  # the first block step with more vectors than k
    sizes = tuple(s for s in bucket_sizes(count, nb * b) if s % b == 0) or (nb * b,)

    steps, carry, tests, (s, res, bounds) = stopping_loop(
        lambda j, carry: _block_step(op, g_u, g_v, ulps, j, carry),
        lambda carry, j: _top_ritz(carry[2], carry[3], j, count, sizes),
        carry, nb, first, k, rtol, b, op.dtype)
    return _result(carry, steps, nb, b), s, res, bounds, tests


def _dot_flops(eqn) -> int:
    """Flops of a dot_general or convolution equation (2 per multiply-add), else 0."""
    out = math.prod(eqn.outvars[0].aval.shape)
    if eqn.primitive.name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * out * math.prod(lhs[i] for i in contract)
    if eqn.primitive.name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        return 2 * out * math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 0


def product_intensity(op: JacobianOperator) -> float:
    """Flops per byte of one product J v: the matrix products of the linearized map (scans
    counted once per iteration) over the bytes of the arrays it closes over (weights and the
    stored activations, read once per product). Read from the jaxpr: nothing runs."""
    closed = jax.make_jaxpr(op.matvec)(jax.ShapeDtypeStruct((op.n_in,), op.dtype))
    stored = sum(math.prod(jnp.shape(c)) * jnp.dtype(c.dtype).itemsize for c in closed.consts)

    def flops(jaxpr, times):
        total = 0
        for eqn in jaxpr.eqns:
            total += times * _dot_flops(eqn)
            inner = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)
                    if hasattr(sub, "eqns"):
                        total += flops(sub, inner)
        return total

    return flops(closed.jaxpr, 1) / max(stored, 1)


def auto_block_size(op: JacobianOperator, max_steps: int) -> int:
    """The block size of the top run: `AUTO_BLOCK` where the products are memory-bound
    (`product_intensity` < `MEMORY_BOUND_INTENSITY`: b products then cost little more than
    one), else 1; reduced to the largest divisor of max_steps ≤ max_steps / `MIN_BLOCK_STEPS`
    (headroom for the extra vectors a block run needs; at max_steps = n it still spans the
    whole space). The default 256 steps give b = 4, 512 give 8."""
    b = AUTO_BLOCK if product_intensity(op) < MEMORY_BOUND_INTENSITY else 1
    most = max(min(b, max_steps // MIN_BLOCK_STEPS), 1)
    return max(d for d in range(1, most + 1) if max_steps % d == 0)


def block_golub_kahan(op: JacobianOperator, v0: Array, num_steps: int, key: Array, *,
                      k: int | None = None, rtol: float = 1e-6) -> BlockBidiagonalization:
    """Block Golub–Kahan–Lanczos bidiagonalization from the start block v0 (b, n_in).

    Args:
      op: the operator (`jacobian_operator`).
      v0: b start vectors as rows (b, n_in), linearly independent.
      num_steps: the most block steps (static); num_steps · b ≤ min(n_in, n_out).
      key: PRNG key for restart vectors.
      k: stop once the top k Ritz values are certified to rtol (None: all steps).
      rtol: relative error bound of the stopping rule.

    Returns:
      `BlockBidiagonalization`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from isometry.linalg._jacobian import jacobian_operator
      >>> a = jnp.diag(jnp.arange(1.0, 21.0))
      >>> op = jacobian_operator(lambda x: a @ x, jnp.ones(20))
      >>> v0 = jax.random.normal(jax.random.key(0), (4, 20))
      >>> bd = block_golub_kahan(op, v0, 5, jax.random.key(1))
      >>> [round(float(v), 3) for v in bd.ritz()[1][:3]]
      [20.0, 19.0, 18.0]
    """
    v0 = jnp.asarray(v0)
    b = v0.shape[0]
    if v0.ndim != 2 or not 1 <= num_steps * b <= min(op.n_in, op.n_out):
        raise ValueError(f"need v0 of shape (b, n_in) and 1 ≤ num_steps · b ≤ "
                         f"{min(op.n_in, op.n_out)}, got {v0.shape} and {num_steps} steps")
    if k is not None:
        return certified_block_run(op, v0, num_steps * b, b, key, k, rtol)[0]
    carry, g_u, g_v = _init(op, v0, num_steps, b, key)
    ulps = BREAKDOWN_ULPS * jnp.finfo(op.dtype).eps
    carry = jax.lax.fori_loop(0, num_steps, lambda j, c: _block_step(op, g_u, g_v, ulps, j, c),
                              carry)
    return _result(carry, jnp.asarray(num_steps, jnp.int32), num_steps, b)
