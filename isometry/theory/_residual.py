"""Jacobian spectra of residual and ReZero nets at α > 0 (free probability, large width).

A residual net x_{l+1} = x_l + α φ(W_l x_l + b_l) (`models.FullyConnected(variant="rezero")`)
has the input-output Jacobian

    J = Π_l A_l,   A_l = I + α D_l W_l,   D_l = diag φ′(h_l),   W_ij ~ N(0, σ_w²/N).

At large N, W_l is a circular element c of variance s = σ_w², D_l is free from it (the usual
assumption of Pennington et al. 2017/2018), and the A_l are *-free, so the squared singular
values of the product have the free multiplicative convolution of the laws of M_l = A_l A_lᵀ:
S_{JJᵀ} = Π_l S_{M_l} (|ab|² ~ |a|² ⊠ |b|² for *-free a, b).

**One factor.** The moments m_k(M) = φ(M^k) come from expanding
M = I + α dc + α c*d + α² dcc*d into words and the free moment–cumulant formula
φ(a₁b₁⋯a_nb_n) = Σ_{π∈NC(n)} κ_π[a] φ_{K(π)}[b] (Nica & Speicher, Thm 14.4): the a's are the
c/c* letters (only pairings of a c with a c* count, each κ₂ = s), the b's the powers of d
between them, evaluated on the blocks of the Kreweras complement K(π) = π⁻¹γ. In closed form,

    m₁(M) = 1 + α² s μ₁,     m₂(M) = 1 + 4α² s μ₁ + α⁴ s² (μ₂ + μ₁²),

with μ_k = E φ′(h)^{2k} at the layer's pre-activation variance q_h.

**The product.** E[m₁(J)] = Π_l (1 + α² s μ₁) (for linear layers (1 + α²σ_w²)^L exactly,
docs/theory.md §3), and normalized variances of free factors add:

    nvar(J) = m₂/m₁² − 1 = Σ_l (2α² s μ₁ + α⁴ s² μ₂) / (1 + α² s μ₁)².

Higher moments (`residual_moments`, any k) by S-transforms: ψ(z) = Σ m_k z^k, χ = ψ⁻¹,
S(w) = χ(w)(1+w)/w; S_J = Π S_l; ψ_J = (w S_J(w)/(1+w))⁻¹, all as truncated power series.

**Scaling limit.** For α → 0 and L → ∞ with t = L α² σ_w² μ₁ fixed, log S_M(w) = −α² s μ₁ (1 + 2w)
+ O(α⁴), so S_J(w) = e^{−t(1+2w)}: only t matters (the law of the free multiplicative Brownian
motion's |G|² at time 2t). By Lagrange inversion,

    m_k = (e^{kt}/k) Σ_{j=0}^{k−1} C(k, j) (2kt)^{k−1−j}/(k−1−j)!,

so m₁ = e^t, m₂ = e^{2t}(1 + 2t), nvar = 2t, m₃ = e^{3t}(1 + 6t + 6t²), …

**Beyond free probability: one outlier.** For ReLU (any φ with E φ′·φ ≠ 0 along the signal)
D_l is correlated with W_l along x_l (D_l W_l x_l = φ(W_l x_l) has a mean), and measured
spectra show one singular value far above the bulk edge (at N = 512, L = 16, α = 0.3:
λ₁ ≈ 200 against a bulk edge ≈ 36). It carries O(1/N) of every m_k, but λ₁^k/N grows fast
with k; the predictions here are those of the bulk, which they match (tests: all but the
largest σ, within the sampling error over nets plus one bulk value λ₂^k/N). Linear residual
nets have no outlier and match in full.

Layer variances: q_x,l+1 = q_x,l + α² E φ(h)², h ~ N(0, q_h,l), q_h,l = σ_w² q_x,l + σ_b² (the
cross term E[x φ(Wx+b)] vanishes at large N); ReLU with σ_b² = 0 and linear layers do not
depend on q.

Example:
    >>> from isometry import theory as tr
    >>> tr.residual_moments("relu", depth=16, alpha=0.3, sigma_w2=2.0, k=2).round(4)
    array([ 3.9703, 57.4132])
    >>> tr.scaling_limit_moments(16 * 0.3**2 * 2.0 * 0.5, k=2).round(4)  # α → 0 at equal t
    array([ 4.2207, 69.1194])
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import numpy as np
from scipy import special

from isometry.theory._activations import resolve_activation
from isometry.theory._d2 import d2_law
from isometry.theory._density import SpectralDensity
from isometry.theory._mean_field import q_map

__all__ = ["factor_moments", "free_product_moments", "residual_moments", "residual_nvar",
           "residual_m1", "scaling_limit_moments", "scaling_time", "layer_variances",
           "d_moments", "residual_log_s", "residual_density", "density_points"]


# --- power series ------------------------------------------------------------------------------


def _mul(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.convolve(a, b)[:n + 1]


def _compose(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """a(b(w)) truncated at w^n (b[0] = 0)."""
    out = np.zeros(n + 1)
    power = np.zeros(n + 1)
    power[0] = 1.0
    for k in range(len(a)):
        if k > n:
            break
        out += a[k] * power
        power = _mul(power, b, n)
    return out


def _inverse(a: np.ndarray, n: int) -> np.ndarray:
    """The compositional inverse b of a (a[0] = 0, a[1] ≠ 0): a(b(w)) = w up to w^n."""
    b = np.zeros(n + 1)
    b[1] = 1.0 / a[1]
    for k in range(2, n + 1):
        b[k] = -_compose(a, b, k)[k] / a[1]
    return b


def _s_transform(moments: np.ndarray) -> np.ndarray:
    """S(w) = χ(w)(1+w)/w to order w^{k−1} from m_1..m_k."""
    k = len(moments)
    psi = np.concatenate([[0.0], moments])
    chi = _inverse(psi, k)
    return _mul(chi[1:], np.array([1.0, 1.0]), k - 1)


def free_product_moments(factors: Sequence[np.ndarray]) -> np.ndarray:
    """m_1..m_k of the free multiplicative convolution of positive laws given by m_1..m_k.

    Example:
      >>> free_product_moments([np.array([1., 2., 5.])] * 2)   # Fuss–Catalan, L = 2
      array([ 1.,  3., 12.])
    """
    k = min(len(f) for f in factors)
    s = np.zeros(k)
    s[0] = 1.0
    transforms: dict = {}
    for f in factors:
        key = tuple(np.asarray(f, np.float64)[:k])
        if key not in transforms:
            transforms[key] = _s_transform(np.array(key))
        s = _mul(s, transforms[key], k - 1)
    # χ_J(w) = w S(w)/(1+w); ψ_J = χ_J⁻¹
    inv_one_plus = (-1.0) ** np.arange(k)
    chi = np.concatenate([[0.0], _mul(s, inv_one_plus, k - 1)])
    return _inverse(chi, k)[1:]


# --- one factor M = (I + α d c)(I + α d c)* -----------------------------------------------------


@functools.lru_cache(maxsize=None)
def _nc_pairings(n: int) -> tuple:
    """All non-crossing pair partitions of range(n), as tuples of pairs."""
    if n == 0:
        return ((),)
    if n % 2:
        return ()
    out = []
    for j in range(1, n, 2):  # 0 pairs with j; inside (1..j−1) and outside (j+1..n−1) separately
        for inner in _nc_pairings(j - 1):
            for outer in _nc_pairings(n - j - 1):
                out.append(((0, j),) + tuple((a + 1, b + 1) for a, b in inner)
                           + tuple((a + j + 1, b + j + 1) for a, b in outer))
    return tuple(out)


# the four terms of M: (power of α, letters); d = D, c = W, C = Wᵀ
_TERMS = ((0, ""), (1, "dc"), (1, "Cd"), (2, "dcCd"))


def _word_moment(word: str, d_moments: np.ndarray, s: float) -> float:
    """φ(word) for a circular c (variance s, κ₂(c, c*) = s) free from a self-adjoint d."""
    letters = [i for i, ch in enumerate(word) if ch != "d"]
    if not letters:
        return float(d_moments[len(word)])
    n = len(letters)
    if n % 2:
        return 0.0
    # exponent of d after each c-letter, cyclically
    exps = [(letters[(j + 1) % n] - pos - 1) % len(word) for j, pos in enumerate(letters)]
    kinds = [word[p] for p in letters]
    total = 0.0
    for pairing in _nc_pairings(n):
        if any(kinds[a] == kinds[b] for a, b in pairing):
            continue
        partner = {}
        for a, b in pairing:
            partner[a], partner[b] = b, a
        seen, value = set(), 1.0
        for i in range(n):  # cycles of K = π∘γ, γ(i) = i + 1
            if i in seen:
                continue
            e, j = 0, i
            while j not in seen:
                seen.add(j)
                e += exps[j]
                j = partner[(j + 1) % n]
            value *= d_moments[e]
        total += value
    return total * s ** (n // 2)


def factor_moments(d_moments: Sequence[float], alpha: float, sigma_w2: float, k: int = 4
                   ) -> np.ndarray:
    """m_1..m_k of M = (I + α D W)(I + α D W)ᵀ at large N (W circular, D free from W).

    Args:
      d_moments: E[φ′(h)^j] for j = 0..2k (j = 0 is 1).
      alpha: the residual weight α.
      sigma_w2: σ_w² (W_ij ~ N(0, σ_w²/N)).
      k: highest moment.

    Example:
      >>> factor_moments([1.0] * 9, 0.3, 1.0, 2)   # linear: [1 + α², 1 + 4α² + 2α⁴]
      array([1.09  , 1.3762])
    """
    d = np.asarray(d_moments, np.float64)
    if len(d) < 2 * k + 1:
        raise ValueError(f"need E[d^j] for j = 0..{2 * k}, got {len(d)} values")
    out = []
    for order in range(1, k + 1):
        total = 0.0
        for choice in itertools.product(_TERMS, repeat=order):
            power = sum(p for p, _ in choice)
            word = "".join(w for _, w in choice)
            if power == 0:
                total += 1.0
                continue
            total += alpha ** power * _word_moment(word, d, sigma_w2)
        out.append(total)
    return np.array(out)


# --- the net -----------------------------------------------------------------------------------


def d_moments(activation, q_h: float, k: int) -> np.ndarray:
    """E[φ′(h)^j] for j = 0..2k, h ~ N(0, q_h) (the input of `factor_moments`)."""
    law = d2_law(activation, q_h)
    j = np.arange(2 * k + 1)
    return np.array([np.sum(law.weights * law.values ** (e / 2)) for e in j])


def layer_variances(activation, depth: int, alpha: float, sigma_w2: float, sigma_b2: float = 0.0,
                    q0: float = 1.0) -> np.ndarray:
    """q_h,l, l = 0..L−1: the pre-activation variance of every layer, from (1/N)‖x_0‖² = q0.

    Linear and ReLU layers without bias have a law of D that does not depend on q: their q's
    are returned as q0 (the Jacobian does not depend on them).
    """
    forms = resolve_activation(activation).closed_forms
    if forms is not None and forms.homogeneous and (sigma_b2 == 0
                                                    or len(forms.d2_atoms(q0)[0]) == 1):
        return np.full(depth, float(q0))
    q_x, out = float(q0), []
    for _ in range(depth):
        q_h = sigma_w2 * q_x + sigma_b2
        out.append(q_h)
        q_x = q_x + alpha ** 2 * q_map(activation, q_h, 1.0, 0.0)
    return np.array(out)


def _mu(activation, q_h: float) -> tuple[float, float]:
    mu = d2_law(activation, q_h).moments(2)
    return float(mu[0]), float(mu[1])


def residual_moments(activation, depth: int, alpha: float, sigma_w2: float,
                     sigma_b2: float = 0.0, *, q0: float = 1.0, k: int = 4) -> np.ndarray:
    """m_1..m_k of JJᵀ for x_{l+1} = x_l + α φ(W_l x_l + b_l), large width (see module doc).

    Example:
      >>> residual_moments("linear", 8, 0.3, 1.0, k=1).round(6)   # (1 + 0.09)^8
      array([1.992563])
    """
    qs = layer_variances(activation, depth, alpha, sigma_w2, sigma_b2, q0)
    cache: dict = {}
    factors = []
    for q in qs:
        key = round(float(q), 12)
        if key not in cache:
            cache[key] = factor_moments(d_moments(activation, q, k), alpha, sigma_w2, k)
        factors.append(cache[key])
    return free_product_moments(factors)


def residual_m1(activation, depth: int, alpha: float, sigma_w2: float, sigma_b2: float = 0.0,
                *, q0: float = 1.0) -> float:
    """E[m₁(J)] = Π_l (1 + α² σ_w² μ₁,l)."""
    qs = layer_variances(activation, depth, alpha, sigma_w2, sigma_b2, q0)
    return float(np.prod([1 + alpha ** 2 * sigma_w2 * _mu(activation, q)[0] for q in qs]))


def residual_nvar(activation, depth: int, alpha: float, sigma_w2: float, sigma_b2: float = 0.0,
                  *, q0: float = 1.0) -> float:
    """nvar(J) = Σ_l (2α² s μ₁ + α⁴ s² μ₂)/(1 + α² s μ₁)², s = σ_w²."""
    qs = layer_variances(activation, depth, alpha, sigma_w2, sigma_b2, q0)
    a2, s = alpha ** 2, sigma_w2
    total = 0.0
    for q in qs:
        mu1, mu2 = _mu(activation, q)
        total += (2 * a2 * s * mu1 + a2 ** 2 * s ** 2 * mu2) / (1 + a2 * s * mu1) ** 2
    return total


def scaling_time(activation, depth: int, alpha: float, sigma_w2: float, sigma_b2: float = 0.0,
                 *, q0: float = 1.0) -> float:
    """t = Σ_l α² σ_w² μ₁,l (= L α² σ_w² μ₁ when μ₁ does not change with depth)."""
    qs = layer_variances(activation, depth, alpha, sigma_w2, sigma_b2, q0)
    return float(sum(alpha ** 2 * sigma_w2 * _mu(activation, q)[0] for q in qs))


def scaling_limit_moments(t: float, k: int = 4) -> np.ndarray:
    """m_1..m_k of JJᵀ in the limit α → 0, L → ∞ at fixed t = L α² σ_w² μ₁ (S = e^{−t(1+2w)})."""
    out = []
    for n in range(1, k + 1):
        total = sum(special.comb(n, j) * (2 * n * t) ** (n - 1 - j) / math.factorial(n - 1 - j)
                    for j in range(n))
        out.append(math.exp(n * t) * total / n)
    return np.array(out)


# --- the density ---------------------------------------------------------------------------------


def _series_log(a: np.ndarray) -> np.ndarray:
    """log a(w) as a power series to the order of `a` (a[0] > 0)."""
    n = len(a) - 1
    u = np.asarray(a, np.float64) / a[0]
    u[0] = 0.0
    out, power = np.zeros(n + 1), np.eye(1, n + 1)[0]
    out[0] = math.log(a[0])
    for j in range(1, n + 1):
        power = _mul(power, u, n)
        out += (-1) ** (j + 1) * power / j
    return out


def residual_log_s(activation, depth: int, alpha: float, sigma_w2: float,
                   sigma_b2: float = 0.0, *, q0: float = 1.0, k: int = 6) -> np.ndarray:
    """Coefficients of log S_J(w) = Σ_l log S_{M_l}(w) to w^{k−1} (from m_1..m_k per layer)."""
    total = np.zeros(k)
    for q in layer_variances(activation, depth, alpha, sigma_w2, sigma_b2, q0):
        m = factor_moments(d_moments(activation, float(q), k), alpha, sigma_w2, k)
        total += _series_log(_s_transform(np.asarray(m, np.float64)))
    return total


def _newton_w(poly, dpoly, z: complex, w: complex) -> complex | None:
    """Newton on (1 + w) − ζ w S(w) = 0 from w (None: no convergence)."""
    for _ in range(60):
        sw = np.exp(poly(w))
        step = (1 + w - z * w * sw) / (1 - z * sw * (1 + w * dpoly(w)))
        w -= step
        if not np.isfinite(w):
            return None
        if abs(step) <= 1e-13 * (1 + abs(w)):
            return w
    return None


def _solve_w(log_s: np.ndarray, zeta: np.ndarray, w0: complex) -> np.ndarray:
    """w(ζ) on the branch from w ≈ m₁/ζ: (1 + w) = ζ w S(w), S = exp(Σ c_j w^j), by Newton
    continuation along the grid ζ (complex, descending in |ζ|), halving a step whose root
    lands far from the previous one (another branch) or does not converge."""
    poly = np.polynomial.Polynomial(log_s)
    dpoly = poly.deriv()
    out = np.empty(len(zeta), complex)
    z_prev, w_prev = zeta[0], _newton_w(poly, dpoly, zeta[0], complex(w0))
    for i, target in enumerate(zeta):
        stack = [target]
        while stack:
            z = stack[-1]
            w = _newton_w(poly, dpoly, z, w_prev)
            if w is None or abs(w - w_prev) > 0.1 * (1 + abs(w_prev)):
                if len(stack) > 40:
                    raise FloatingPointError(f"density continuation stalled at lambda = "
                                             f"{abs(z):.4g}")
                stack.append(np.sqrt(z * z_prev))
                continue
            stack.pop()
            z_prev, w_prev = z, w
        out[i] = w_prev
    return out


def residual_density(activation, depth: int, alpha: float, sigma_w2: float,
                     sigma_b2: float = 0.0, *, q0: float = 1.0, k: int = 6, nodes: int = 3000,
                     eta: float = 1e-5) -> SpectralDensity:
    """The predicted density of σ(J) of x_{l+1} = x_l + α φ(W_l x_l + b_l) (large width).

    From the S-transform truncated at w^{k−1} (`residual_log_s`): λ = σ² solves
    (1 + w) = ζ w S_J(w) at ζ = λ(1 + iη), followed by Newton continuation from far above the
    spectrum (w ≈ m₁/ζ) down a log grid of λ; ρ per unit of log10 σ = −(2 ln 10/π) Im w.
    docs/theory.md §5 gives the method, its accuracy (truncation O((α²σ_w² w)^k) per layer,
    the smoothing η) and its limits (the bulk only: ReLU's outlier is not in it).

    Example:
        >>> d = residual_density("linear", 8, 0.3, 1.0)
        >>> round(d.mass, 3), round(float(d.edge), 2)
        (1.0, 10.79)
    """
    log_s = residual_log_s(activation, depth, alpha, sigma_w2, sigma_b2, q0=q0, k=k)
    m1 = math.exp(-log_s[0])  # S(0) = 1/m₁
    c1 = abs(log_s[1])  # ≈ 2t: log λ spreads over about ±(t + a few √t)
    top = m1 * math.exp(4 + c1 + 4 * math.sqrt(c1))  # far above the edge
    lam = np.exp(np.linspace(math.log(top), math.log(m1) - 12 - 2 * c1, nodes))
    w = _solve_w(log_s, lam * (1 + 1j * eta), m1 / top)
    density = np.maximum(-2 * math.log(10) / math.pi * w.imag, 0.0)[::-1]
    density[density < 1e-5 * density.max()] = 0.0  # η's Lorentzian tails outside the support
    log10_sigma = 0.5 * np.log10(lam)[::-1]
    mass = float(np.trapezoid(density, log10_sigma))
    mean_sigma = float(np.trapezoid(density * 10.0 ** log10_sigma, log10_sigma))
    support = log10_sigma[density > 1e-3 * density.max()]
    return SpectralDensity(log10_sigma, density, float(10 ** (2 * support[-1])), 0.0,
                           np.zeros(0), np.zeros(0), mass, mean_sigma)


def density_points(density: SpectralDensity, points: int = 200) -> dict:
    """The density on `points` log10 σ over its support (±0.05), for JSON and overlays.

    Example:
        >>> d = density_points(residual_density("linear", 8, 0.3, 1.0), points=5)
        >>> len(d["log10_sigma"]), round(d["mass"], 3)
        (5, 1.0)
    """
    inside = density.log10_sigma[density.density > 0]
    grid = np.linspace(inside[0] - 0.05, inside[-1] + 0.05, points)
    return dict(log10_sigma=grid, density=np.interp(grid, density.log10_sigma, density.density),
                mass=density.mass, edge=density.edge)
