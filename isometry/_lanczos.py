"""Matrix-free spectra: Golub–Kahan bidiagonalization, top singular values, SLQ density, chi.

For J = ∂y/∂x (n_out × n_in) available only as products v ↦ Jv and u ↦ Jᵀu
(`jacobian_operator`), m steps of Golub–Kahan–Lanczos bidiagonalization from a unit vector
v₁ build orthonormal V = [v₁ … v_m], U = [u₁ … u_m] and the upper-bidiagonal B (diagonal
α_j, superdiagonal β_j) with

    J V = U B,        Jᵀ U = V Bᵀ + β_m v_{m+1} e_mᵀ.

Every vector is re-orthogonalized against all earlier ones (twice, classical Gram–Schmidt),
so the recurrence stays accurate in floating point; a breakdown (α_j or β_j at round-off
level: an invariant subspace was found, e.g. J = I) restarts with a random orthogonal vector.

From the SVD B = P Σ Qᵀ:

* **Top singular values.** σ_i(B) ≤ σ_i(J) (B is J restricted to span V), and the Ritz
  triplet leaves the residual ‖Jᵀ(U p_i) − σ_i V q_i‖ = |β_m P_{m,i}|, so some singular value
  of J lies within that bound of σ_i(B). The largest values converge first: a few tens of
  steps beyond k give the top k to many digits unless they are clustered. Several runs
  (probes) are combined by taking the largest Ritz value at each rank (all are lower bounds).
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
  reported. `hutchinson_chi` is plain Hutchinson with JVPs alone (cheap enough for every
  training step).

Rectangular J: everything runs on the short side (JᵀJ or JJᵀ, whichever is smaller), so the
density describes the k = min(n_in, n_out) singular values, like the dense `Spectrum`.

References: Golub & Kahan (1965); Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via
stochastic Lanczos quadrature" (2017); Hutchinson (1989).
"""

from __future__ import annotations

import dataclasses
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
    "golub_kahan",
    "hutchinson_chi",
    "lanczos_spectrum",
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
    """The upper-bidiagonal B of J from `golub_kahan` (vectors not kept).

    Buffers have the static length m = num_steps; after an early stop only the first `steps`
    entries are filled (the rest are 0).

    Attributes:
      alphas: diagonal α_1..α_m, shape (m,).
      betas: β_1..β_m; β_1..β_{steps−1} are B's superdiagonal, β_steps couples to the next
        v (the residual of the last step), shape (m,).
      steps: number of steps done (≤ m), an int array.
      right_vectors: v_1..v_m as rows (zero beyond `steps`), shape (m, n_in): J V = U B.
    """

    alphas: Array
    betas: Array
    steps: Array
    right_vectors: Array

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


def _orthogonalize(w: Array, basis: Array) -> Array:
    """w minus its projection on the rows of `basis` (zero rows are ignored); twice (CGS2)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _unit(w: Array) -> Array:
    norm = jnp.linalg.norm(w)
    return w / jnp.maximum(norm, jnp.finfo(w.dtype).tiny)


def golub_kahan(op: JacobianOperator, v0: Array, num_steps: int, key: Array, *,
                k: int | None = None, rtol: float = 1e-6,
                check_every: int = 16) -> Bidiagonalization:
    """Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization.

    Starting from v₁ = v0/‖v0‖:
        α_j u_j = J v_j − β_{j−1} u_{j−1},    β_j v_{j+1} = Jᵀ u_j − α_j v_j,
    each new vector orthogonalized against all earlier u's (or v's). When α_j or β_j falls
    to round-off level the recurrence continues from a random vector orthogonal to the basis
    (its coefficient set to 0), which keeps J V = U B exact.

    Convergence test (when `k` is given): every `check_every` steps the SVD of the current B
    gives the top-k Ritz values and their residual bounds; the run stops once every bound is
    ≤ rtol · σ_i, or after `num_steps` steps.

    Args:
      op: the operator (`jacobian_operator`): matvec (n_in,) → (n_out,), rmatvec back.
      v0: starting vector (n_in,), not zero.
      num_steps: m, the most steps, ≤ min(n_in, n_out) (static).
      key: PRNG key for restart vectors.
      k: stop early once the top k Ritz values have converged (None: run all m steps).
      rtol: relative residual bound of the convergence test.
      check_every: steps between convergence tests.

    Returns:
      `Bidiagonalization` with α and β of shape (m,) and the number of steps done.
    """
    m = num_steps
    if not 1 <= m <= min(op.n_in, op.n_out):
        raise ValueError(f"num_steps must be in [1, min(n_in, n_out) = {min(op.n_in, op.n_out)}], "
                         f"got {m}")
    dtype = op.dtype
    ulps = _BREAKDOWN_ULPS * jnp.finfo(dtype).eps

    # Restart directions: one Gaussian vector per side, rolled by the step number (no random
    # draws inside the loop: they are slow to compile on CPU).
    key_u, key_v = jax.random.split(key)
    g_u = jax.random.normal(key_u, (op.n_out,), dtype)
    g_v = jax.random.normal(key_v, (op.n_in,), dtype)

    def next_vector(w, raw_norm, basis, scale, g, j):
        # Coefficient and unit vector; a random orthogonal direction after a breakdown.
        w = _orthogonalize(w, basis)
        coef = jnp.linalg.norm(w)
        broke = coef <= ulps * jnp.maximum(raw_norm, scale)
        fresh = _unit(_orthogonalize(jnp.roll(g, j), basis))
        return jnp.where(broke, 0.0, coef), jnp.where(broke, fresh, w / jnp.where(broke, 1, coef))

    def step(j, carry):
        us, vs, alphas, betas, scale = carry
        v = vs[j]
        jv = op.matvec(v)
        previous = jnp.where(j > 0, betas[j - 1], 0.0) * us[j - 1]
        alpha, u = next_vector(jv - previous, jnp.linalg.norm(jv), us, scale, g_u, j)
        scale = jnp.maximum(scale, alpha)
        jtu = op.rmatvec(u)
        beta, v_next = next_vector(jtu - alpha * v, jnp.linalg.norm(jtu), vs, scale, g_v, j)
        scale = jnp.maximum(scale, beta)
        return (us.at[j].set(u), vs.at[j + 1].set(v_next), alphas.at[j].set(alpha),
                betas.at[j].set(beta), scale)

    zeros = jnp.zeros((m,), dtype)
    carry = (jnp.zeros((m, op.n_out), dtype),
             jnp.zeros((m + 1, op.n_in), dtype).at[0].set(_unit(jnp.asarray(v0, dtype))),
             zeros, zeros, jnp.zeros((), dtype))
    if k is None:
        _, vs, alphas, betas, _ = jax.lax.fori_loop(0, m, step, carry)
        return Bidiagonalization(alphas, betas, jnp.asarray(m), vs[:m])

    def unconverged(state):
        j, (_, _, alphas, betas, _) = state
        _, s, _, res = Bidiagonalization(alphas, betas, j, None).ritz()
        done = jnp.all(res[:k] <= rtol * s[:k]) & (j >= k)
        return (j < m) & ~done

    def block(state):
        j, carry = state
        stop = jnp.minimum(j + check_every, m)
        return stop, jax.lax.fori_loop(j, stop, step, carry)

    steps, (_, vs, alphas, betas, _) = jax.lax.while_loop(unconverged, block,
                                                          (jnp.asarray(0), carry))
    vs = jnp.where((jnp.arange(m) < steps)[:, None], vs[:m], 0)  # drop v_{steps+1}
    return Bidiagonalization(alphas, betas, steps, vs)


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
      residual_bounds: |β_m P_{m,i}|: a singular value of J lies within this of each, (..., k).
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
                     bandwidth: float = DEFAULT_BANDWIDTH) -> LanczosSpectrum:
    """Matrix-free spectrum of J = ∂fn(x)/∂x: top-k σ, SLQ density of log10 σ, Hutchinson chi.

    Two kinds of Golub–Kahan runs on the short side of J (`jacobian_operator` products):

    * top k: one run from a random start until the top k residual bounds are ≤ rtol · σ_i
      (tested every 16 steps) or `max_steps` steps;
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
      rtol: convergence test of the top-k run: residual bound ≤ rtol · σ_i.
      num_steps: m, GK steps per density probe (capped like max_steps).
      num_probes: p, random probes for the density.
      chi_probes: Rademacher probes of the deflated Hutchinson estimate of chi (one JVP
        each, batched; ≥ 2 for a standard error).
      bandwidth: kernel width of the density in decades of σ.

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
    if min(num_probes, chi_probes, m) < 1:
        raise ValueError(f"num_probes, chi_probes and num_steps must be positive, got "
                         f"{num_probes}, {chi_probes}, {num_steps}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    top_key, probe_key, chi_key, restart_key = jax.random.split(key, 4)

    # Top k: one run with a convergence test.
    start = jax.random.normal(top_key, (n_short,), op.dtype)
    top = golub_kahan(op, start, m_top, restart_key, k=k, rtol=rtol)
    _, s_top, _, res_top = top.ritz()

    # Density and chi: Gauss quadrature of every probe.
    probes = _rademacher(probe_key, (num_probes, n_short), op.dtype)
    restart_keys = jax.random.split(jax.random.fold_in(restart_key, 1), num_probes)
    bidiag = jax.vmap(lambda v, kk: golub_kahan(op, v, m, kk))(probes, restart_keys)
    _, nodes, qt, residuals = jax.vmap(Bidiagonalization.ritz)(bidiag)
    weights = jnp.square(qt[:, :, 0])
    low = jnp.argmin(nodes[:, -1])  # every probe's smallest node is an upper bound on σ_min

    # chi, deflated Hutchinson (Hutch++): with P the projector on the top run's span V,
    # ‖J‖_F² = ‖J P‖_F² + ‖J (I − P)‖_F², where ‖J P‖_F² = ‖B‖_F² exactly (J V = U B) and the
    # remainder, without the dominant directions, is sampled with the projected probes.
    q = top.right_vectors
    r = _rademacher(chi_key, (chi_probes, n_short), op.dtype)
    rest = jax.vmap(op.matvec)(r - (r @ q.T) @ q)
    frob, err = _hutchinson(rest)
    frob = frob + jnp.sum(jnp.square(top.matrix()))
    n_bad = sum(jnp.sum(~jnp.isfinite(a)) for a in (bidiag.alphas, bidiag.betas, s_top, frob))
    return LanczosSpectrum(
        singular_values=s_top[:k], residual_bounds=res_top[:k],
        sigma_min_estimate=nodes[low, -1], sigma_min_residual=residuals[low, -1],
        chi=frob / n_in, chi_stderr=err / n_in,
        nodes=nodes, weights=weights, n_nonfinite=n_bad.astype(jnp.int32),
        n_in=n_in, n_out=n_out, bandwidth=float(bandwidth))


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
