"""Matrix-free spectra: top singular values, SLQ density and chi, from Golub–Kahan runs.

The runs themselves (bidiagonalization J V = U B, one vector or a block of b per step) are in
`isometry.linalg._golub_kahan`, their Ritz values, error bounds and stopping rule in
`isometry.linalg._ritz`; which block size the top run takes (`auto_block_size`, a cost model of
J's products) is decided here and handed to linalg as a plain integer. Every count of steps
(`max_steps`, `num_steps`, `TopSingularValues.steps`) is in vectors: products with J, b per
Golub–Kahan step. From the SVD B = P Σ Qᵀ:

* **Top singular values.** σ_i(B) ≤ σ_i(J) (B is J restricted to span V), and the Ritz
  triplet leaves the residual ‖Jᵀ(U p_i) − σ_i V q_i‖ = |β_m P_{m,i}| (for blocks
  ‖C_sᵀ E_sᵀ p_i‖), so some singular value
  of J lies within that bound of σ_i(B); the gap to the neighbouring Ritz values squares it
  (`error_bounds`: r²/2δ for single values, the block residual over the gap for clusters).
  The run stops at the first step where these bounds certify the requested accuracy
  (`golub_kahan`'s stopping rule, `top_singular_values`). Where J's products are
  memory-bound the run takes blocks of b vectors (`golub_kahan(block_size=b)`: the same
  relations and bounds, b products for little more than the cost of one; `auto_block_size`
  decides). The largest values converge
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

Cost of `lanczos_spectrum`: one forward pass plus (steps of the top run + num_probes ×
num_steps) products J v and Jᵀ u, and O(steps² · n) for reorthogonalization; memory: that
many vectors of n. Its top-k run stops when the top k error bounds are ≤ rtol · σ_i (the
stopping rule of `golub_kahan`) or after `max_steps` vectors; its density probes are vmapped so
their products are batched; its chi probes cost one JVP each.

Rectangular J: everything runs on the short side (JᵀJ or JJᵀ, whichever is smaller), so the
density describes the k = min(n_in, n_out) singular values, like the dense `Spectrum`.

References: Golub & Kahan (1965); Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via
stochastic Lanczos quadrature" (2017); Hutchinson (1989).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from isometry.linalg._golub_kahan import (Bidiagonalization, bidiagonalize_runs, certified_run,
                                          golub_kahan)
from isometry.linalg._jacobian import JacobianOperator, jacobian_operator
from isometry.linalg._ritz import error_bounds
from isometry.spectrum._lanczos_result import DEFAULT_BANDWIDTH, LanczosSpectrum, TopSingularValues
from isometry._numerics import check_setting

__all__ = [
    "Bidiagonalization",
    "LanczosSpectrum",
    "TopSingularValues",
    "auto_block_size",
    "error_bounds",
    "golub_kahan",
    "hutchinson_chi",
    "lanczos_spectrum",
    "product_intensity",
    "top_singular_values",
]

Array = Any

#: Defaults: top singular values, most steps and tolerance of their run, steps per density
#: probe, density probes, chi probes (the kernel width is `DEFAULT_BANDWIDTH`, in decades).
DEFAULT_K = 10
DEFAULT_MAX_STEPS = 256
DEFAULT_RTOL = 1e-6
DEFAULT_NUM_STEPS = 64
DEFAULT_NUM_PROBES = 8
DEFAULT_CHI_PROBES = 64

#: Flops per byte of a product's stored arrays below which products are memory-bound and the
#: top run takes blocks (a CPU core does a few flops per byte of memory traffic; the dense
#: layers of `models.FullyConnected` do 0.5, a Transformer of 64 tokens about 28).
MEMORY_BOUND_INTENSITY = 4.0
#: The block size of a memory-bound operator, and the fewest Golub–Kahan steps (of b vectors)
#: its budget must allow (a block run needs up to twice the vectors of a single one: FC
#: 16×1024 at b = 4 takes 148 where one vector per step takes 102, at b = 8 200 of the
#: default 256).
AUTO_BLOCK = 8
MIN_BLOCK_STEPS = 64


def top_singular_values(fn: Callable, x: Any, k: int = DEFAULT_K, rtol: float = DEFAULT_RTOL, *,
                        max_steps: int = DEFAULT_MAX_STEPS, key: Array | None = None,
                        block_size: int | None = None) -> TopSingularValues:
    """The k largest singular values of J = ∂fn(x)/∂x, matrix-free, certified to rtol.

    One Golub–Kahan run (products from `jacobian_operator`, on the short side of J) from a
    Gaussian start, stopped by its rule as soon as every top-k error bound is ≤ rtol · θ_i
    (or after `max_steps` vectors). Where J's products are memory-bound (dense layers: the
    weights are read once per product) the run takes blocks of b vectors (`golub_kahan` with
    `block_size=b`), whose b products cost little more than one: more vectors, less time. No density, no chi:
    the cheapest way to σ_1..σ_k. Jittable and vmappable (wrap it:
    `jax.jit(lambda x: top_singular_values(fn, x))`).

    Cost: one forward pass, 2 · steps products (J v, Jᵀ u; steps counts vectors) and
    O(steps² · n) for the
    reorthogonalization; memory: 2 · max_steps vectors.

    Args:
      fn: `x -> y`, arrays or pytrees of floating arrays.
      x: the point at which J is taken.
      k: how many singular values.
      rtol: relative accuracy to certify: σ_i − θ_i ≤ rtol · θ_i. In float32 ask for
        rtol ≳ 1e-6 · σ_1/σ_k (round-off of the products is not in the bound).
      max_steps: the most vectors, i.e. products with J (capped at min(n_in, n_out), where
        all σ are exact); with blocks of b, ⌊max_steps / b⌋ Golub–Kahan steps.
      key: PRNG key for the start and restart vectors (None: `jax.random.key(0)`).
      block_size: vectors per Golub–Kahan step; None: `auto_block_size` (where the products are
        memory-bound 4 at the default max_steps, 8 from 512 on; else 1).

    Returns:
      `TopSingularValues`; check `converged` (False: `max_steps` ran out first).

    Example:
      >>> import jax.numpy as jnp, isometry as iso
      >>> w = jnp.diag(jnp.linspace(2.0, 0.5, 32))
      >>> top = iso.top_singular_values(lambda x: w @ x, jnp.ones(32), k=2, rtol=1e-4)
      >>> [round(float(v), 3) for v in top.singular_values], bool(top.converged)
      ([2.0, 1.952], True)
    """
    _check_steps(max_steps, rtol, k=k)
    op, _ = _short_side(jacobian_operator(fn, x))
    m = min(max_steps, op.n_in)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, min(max_steps, n) = {m}], got {k}")
    key = _key_or_default(key)
    out, s, res, bounds, vectors = _certified_top(op, m, key, k, rtol, block_size)
    return TopSingularValues(singular_values=s, error_bounds=bounds, residuals=res,
                             steps=vectors, rtol=float(rtol))


def _certified_top(op, m, key, k, rtol, block_size):
    """The certified top-k run (`certified_run`) of at most m vectors, b per step
    (`auto_block_size` when block_size is None): (run, θ, residuals, error bounds, vectors)."""
    b = auto_block_size(op, m) if block_size is None else block_size
    if not 1 <= b <= m:
        raise ValueError(f"block_size must be in [1, max_steps = {m}], got {b}")
    out, s, res, bounds, _ = certified_run(op, None, m, key, k, rtol, block_size=b)
    return out, s, res, bounds, out.steps


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
    """The block size of the top run, the cost model the dispatcher applies before handing
    the run a plain integer: `AUTO_BLOCK` where the products are memory-bound
    (`product_intensity` < `MEMORY_BOUND_INTENSITY`: b products then cost little more than
    one), else 1; reduced to the largest divisor of max_steps (vectors) ≤ max_steps /
    `MIN_BLOCK_STEPS` (headroom for the extra vectors a block run needs; at max_steps = n it
    still spans the whole space). The default 256 steps give b = 4, 512 give 8."""
    b = AUTO_BLOCK if product_intensity(op) < MEMORY_BOUND_INTENSITY else 1
    most = max(min(b, max_steps // MIN_BLOCK_STEPS), 1)
    return max(d for d in range(1, most + 1) if max_steps % d == 0)


def _hutchinson(tangents: Array) -> tuple[Array, Array]:
    """Mean of ‖J r_p‖² over the probes (axis 0 of `tangents` = J r_p) and its standard error."""
    p = tangents.shape[0]
    samples = jnp.sum(jnp.square(tangents.reshape(p, -1)), axis=-1)
    err = (jnp.std(samples, ddof=1) / math.sqrt(p) if p > 1
           else jnp.full((), jnp.inf, samples.dtype))
    return jnp.mean(samples), err


def _transposed(op: JacobianOperator) -> JacobianOperator:
    return JacobianOperator(op.rmatvec, op.matvec, op.n_out, op.n_in, op.dtype)


def _short_side(op: JacobianOperator) -> tuple[JacobianOperator, tuple[int, int]]:
    """The operator on J's short side (JJᵀ has no extra zero eigenvalues) and J's (n_in, n_out)."""
    return (_transposed(op) if op.n_out < op.n_in else op), (op.n_in, op.n_out)


def _key_or_default(key: Array | None) -> Array:
    """The convention of every public function here: `key=None` means `jax.random.key(0)`."""
    return jax.random.key(0) if key is None else key


def _rademacher(key: Array, shape: tuple[int, ...], dtype) -> Array:
    return jax.random.rademacher(key, shape, dtype=dtype)


def _check_steps(max_steps, rtol, **counts):
    """ValueError naming a step count that is not a positive integer or an rtol outside (0, 1)."""
    check_setting("rtol", rtol, low=0, high=1, low_open=True, high_open=True)
    for name, value in dict(max_steps=max_steps, **counts).items():
        check_setting(name, value, low=1, integer=True)


def _check_options(k, max_steps, rtol, n_short, num_probes, chi_probes, num_steps, bandwidth,
                   top_run) -> tuple[int, int]:
    """(m, m_top): the density's and the top run's steps capped at `n_short`; ValueError for
    settings of `lanczos_spectrum` that cannot run."""
    _check_steps(max_steps, rtol, num_steps=num_steps, num_probes=num_probes, k=k)
    check_setting("chi_probes", chi_probes, low=0, integer=True)
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
    return m, m_top


def _top_run_and_chi(op, r, m_top, key, k, rtol, block_size):
    """Top k by one run with the stopping rule (as `top_singular_values`), and chi deflated by
    its Krylov space (Hutch++): with P the projector on the run's span V,
    ‖J‖_F² = ‖J P‖_F² + ‖J (I − P)‖_F², where ‖J P‖_F² = ‖B‖_F² exactly (J V = U B) and the
    remainder, without the dominant directions, is sampled with the projected probes `r`.
    Returns (θ, error bounds, ‖J‖_F² estimate, its standard error)."""
    top, s_top, _, bounds_top, _ = _certified_top(op, m_top, key, k, rtol, block_size)
    q = top.right_vectors
    rest = jax.vmap(op.matvec)(r - (r @ q.T) @ q)
    frob, err = _hutchinson(rest)
    return s_top, bounds_top, frob + jnp.sum(jnp.square(top.matrix())), err


def _best_over_probes(nodes, residuals, count):
    """The largest Ritz value over the probes at each rank < count, and its error bound."""
    bounds = jax.vmap(lambda s, res: error_bounds(s, res))(nodes, residuals)[:, :count]
    best = jnp.argmax(nodes[:, :count], axis=0)
    s_top = jnp.take_along_axis(nodes[:, :count], best[None], axis=0)[0]
    return s_top, jnp.take_along_axis(bounds, best[None], axis=0)[0]


def _quadrature(op, probes, m, key):
    """The probes' runs and their Gauss quadrature: (runs, nodes σ_i(B), weights Q_{1,i}²,
    residual bounds), each with a leading probe axis."""
    bidiag = bidiagonalize_runs(op, probes, m, key)
    _, nodes, qt, residuals = jax.vmap(Bidiagonalization.ritz)(bidiag)
    return bidiag, nodes, jnp.square(qt[:, :, 0]), residuals


def lanczos_spectrum(fn: Callable, x: Any, key: Array | None = None, *, k: int = DEFAULT_K,
                     max_steps: int = DEFAULT_MAX_STEPS, rtol: float = DEFAULT_RTOL,
                     num_steps: int = DEFAULT_NUM_STEPS, num_probes: int = DEFAULT_NUM_PROBES,
                     chi_probes: int = DEFAULT_CHI_PROBES, bandwidth: float = DEFAULT_BANDWIDTH,
                     top_run: bool = True, block_size: int | None = None) -> LanczosSpectrum:
    """Matrix-free spectrum of J = ∂fn(x)/∂x: top-k σ, SLQ density of log10 σ, Hutchinson chi.

    Golub–Kahan runs on the short side of J (the module docstring says how): top k by one
    certified run, the density by `num_probes` batched runs, chi by deflated Hutchinson.
    Jittable and vmappable (`spectrum_fn(method="lanczos")` calls it).

    Args:
      fn: `x -> y`, arrays or pytrees of floating arrays.
      x: the point at which J is taken.
      key: PRNG key of the probes and runs (None: `jax.random.key(0)`).
      k: number of top singular values to report.
      max_steps, rtol, block_size: the top-k run's most vectors (capped at min(n_in, n_out)),
        stopping rule (error bound ≤ rtol · σ_i) and block size (`top_singular_values`).
      num_steps: m, vectors (GK steps) per density probe (capped like max_steps).
      num_probes: p, random probes for the density.
      chi_probes: Rademacher probes of deflated Hutchinson (≥ 2 for a standard error).
      bandwidth: kernel width of the density in decades of σ.
      top_run: False skips the top-k run: the top k are then the largest Ritz values over
        the probes (uncertified), chi deflated by the probes' own Krylov spaces.

    Returns:
      `LanczosSpectrum`. Check `converged()` (or `residual_bounds`) before trusting the top
      k; `sigma_min` is an upper-bound estimate only.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.diag(jnp.linspace(2.0, 0.5, 32))
      >>> spec = lanczos_spectrum(lambda x: w @ x, jnp.ones(32), jax.random.key(0), k=2)
      >>> round(float(spec.sigma_max), 3), spec.engine, spec.top_singular_values.shape
      (2.0, 'lanczos', (2,))
    """
    op, (n_in, n_out) = _short_side(jacobian_operator(fn, x))
    m, m_top = _check_options(k, max_steps, rtol, op.n_in, num_probes, chi_probes, num_steps,
                              bandwidth, top_run)
    n_short = op.n_in
    # One Rademacher draw for the density probes and the chi probes (one threefry compiled).
    probe_key, restart_key = jax.random.split(_key_or_default(key))
    draws = _rademacher(probe_key, (num_probes + chi_probes, n_short), op.dtype)
    probes, r = draws[:num_probes], draws[num_probes:]

    # Density and chi: Gauss quadrature of every probe (the runs' products batched).
    bidiag, nodes, weights, residuals = _quadrature(op, probes, m, jax.random.fold_in(restart_key, 1))
    low = jnp.argmin(nodes[:, -1])  # every probe's smallest node is an upper bound on σ_min
    if top_run:
        s_top, bounds_top, frob, err = _top_run_and_chi(op, r, m_top, restart_key, k, rtol, block_size)
    else:
        s_top, bounds_top = _best_over_probes(nodes, residuals, min(k, m))
        frob, err = _probe_deflated_chi(bidiag, probes, r, jax.vmap(op.matvec)(r))
    n_bad = sum(jnp.sum(~jnp.isfinite(a)) for a in (bidiag.alphas, bidiag.betas, s_top, frob))
    return LanczosSpectrum(
        top_singular_values=s_top, error_bounds=bounds_top,
        sigma_min_estimate=nodes[low, -1], sigma_min_residual=residuals[low, -1],
        chi=frob / n_in, chi_stderr=err / n_in,
        nodes=nodes, weights=weights, n_nonfinite=n_bad.astype(jnp.int32),
        n_in=n_in, n_out=n_out, bandwidth=float(bandwidth), rtol=float(rtol))


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
    count = jnp.sum(valid, axis=1).astype(samples.dtype)
    mean = jnp.sum(jnp.where(valid, samples, 0), axis=1) / count
    var = jnp.sum(jnp.where(valid, jnp.square(samples - mean[:, None]), 0), axis=1) / (count - 1)
    return jnp.mean(exact + mean), jnp.sqrt(jnp.mean(var / count))


def hutchinson_chi(fn: Callable, x: Any, key: Array | None = None, num_probes: int = 16):
    """chi = ‖J‖_F²/n_in of every output leaf of fn from JVPs alone (Hutchinson).

    ‖J‖_F² = E‖J r‖² for Rademacher r (E[r rᵀ] = I): one forward pass carrying `num_probes`
    tangents, no transpose, cheap enough to log every training step. For a function returning
    a list of hidden states [x_0, …, x_L], one pass gives chi_l of every ∂x_l/∂x_0.

    Args:
      fn: `x -> y`, y an array or a pytree of arrays.
      x: the input (array or pytree, n_in entries in all).
      key: PRNG key for the probes (None: `jax.random.key(0)`).
      num_probes: number of Rademacher tangents (≥ 2 for a standard error).

    Returns:
      (chi, stderr): pytrees shaped like fn's output with a scalar per leaf. The relative
      standard error is about √(2 Σ_{i≠j} (JᵀJ)_{ij}²) / (‖J‖_F² √num_probes).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    x_flat, unravel = ravel_pytree(x)
    n_in = x_flat.size
    probes = _rademacher(_key_or_default(key), (num_probes, n_in), x_flat.dtype)
    tangents = jax.vmap(lambda r: jax.jvp(fn, (x,), (unravel(r),))[1])(probes)

    def chi_of(t):
        frob, err = _hutchinson(t)
        return frob / n_in, err / n_in

    pairs = jax.tree_util.tree_map(chi_of, tangents)
    chi = jax.tree_util.tree_map(lambda p: p[0], pairs, is_leaf=lambda t: isinstance(t, tuple))
    err = jax.tree_util.tree_map(lambda p: p[1], pairs, is_leaf=lambda t: isinstance(t, tuple))
    return chi, err
