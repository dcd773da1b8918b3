"""Gaussian integrals ∫Dz g(z) by composite Gauss–Legendre, split at the activation's kinks.

Nodes lie on z ∈ [−10, 10] (∫_{|z|>10} Dz ≈ 1.5e-23), 32 panels of 20 Gauss–Legendre nodes on
every segment between kinks, so no node ever sits on a declared kink (Gauss–Hermite with an odd
node count would put one on ReLU's; docs/theory.md §1). Accurate to ~1e-12 for integrands
smooth between the kinks and of at most polynomial growth. Everything runs in float64 inside
a scoped `jax.enable_x64` (the global setting is left alone).

Example:
    >>> import jax.numpy as jnp
    >>> round(gaussian_expectation(lambda h: jnp.maximum(h, 0) ** 2, 2.0, kinks=(0.0,)), 12)
    1.0
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from isometry.theory._activations import Q_FLOOR, Activation

__all__ = ["gaussian_expectation", "z_rule", "quadrature_fns", "scalar"]

_Z_MAX = 10.0
_PANELS = 32
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)


def _rule(breaks):
    """Nodes z and weights w with Σ w g(z) ≈ ∫Dz g(z), for g smooth between `breaks`.

    breaks: (..., S+1) increasing points in [−Z, Z]; each of the S segments gets `_PANELS`
    Gauss–Legendre panels. Returns z, w of shape (..., S·panels·20).
    """
    a, b = breaks[..., :-1, None, None], breaks[..., 1:, None, None]
    t = (np.arange(_PANELS)[:, None] + (_GL_NODES[None, :] + 1) / 2) / _PANELS
    t = jnp.asarray(t.reshape((1,) * (breaks.ndim - 1) + (1, *t.shape)), jnp.float64)
    gl = jnp.asarray(_GL_WEIGHTS.reshape((1,) * (t.ndim - 1) + (-1,)), jnp.float64)
    z = a + (b - a) * t
    w = (b - a) / _PANELS * gl / 2 * jnp.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    shape = (*breaks.shape[:-1], -1)
    return z.reshape(shape), w.reshape(shape)


def _breaks(kinks_z):
    """[−Z, kinks (clipped, sorted), Z] along the last axis."""
    k = jnp.clip(jnp.sort(kinks_z, axis=-1), -_Z_MAX, _Z_MAX)
    lo = jnp.full((*k.shape[:-1], 1), -_Z_MAX, jnp.float64)
    return jnp.concatenate([lo, k, -lo], axis=-1)


def z_rule(act: Activation, q):
    """((z, w), √q): the ∫Dz rule for integrands of φ(√q z), φ′(√q z), split at z = kink/√q."""
    sq = jnp.sqrt(jnp.maximum(q, Q_FLOOR))
    return _rule(_breaks(jnp.asarray(act.kinks, dtype=jnp.float64) / sq)), sq


def scalar(fn: Callable, *args) -> float:
    """float(fn(*args)) with every argument a float64 scalar, computed under scoped x64."""
    with jax.enable_x64(True):
        return float(fn(*(jnp.asarray(a, jnp.float64) for a in args)))


def gaussian_expectation(f: Callable, q: float, kinks: tuple[float, ...] = ()) -> float:
    """E f(h) for h ~ N(0, q), by composite Gauss–Legendre split at `kinks` (in h units).

    Example:
      >>> round(gaussian_expectation(lambda h: h ** 4, 3.0), 10)     # 3 q²
      27.0
    """
    return scalar(_expect_fn(Activation("f", f, tuple(kinks))), q)


@functools.lru_cache(maxsize=None)
def _expect_fn(act: Activation):
    @jax.jit
    def expect(q):
        (z, w), sq = z_rule(act, q)
        return jnp.sum(w * act.fn(sq * z))
    return expect


def _pair(act: Activation, c, q, f):
    """∫Dz₁Dz₂ f(u₁) f(u₂): inner z₂ rule split where u₂ crosses a kink, per z₁ node."""
    (z1, w1), sq = z_rule(act, q)
    s = jnp.sqrt(jnp.maximum(1.0 - c * c, 1e-300))
    kz = jnp.asarray(act.kinks, dtype=jnp.float64) / sq
    z2, w2 = _rule(_breaks((kz[None, :] - c * z1[:, None]) / s))
    u2 = sq * (c * z1[:, None] + s * z2)
    inner = jnp.sum(w2 * f(u2), axis=-1)
    return jnp.sum(w1 * f(sq * z1) * inner)


@functools.lru_cache(maxsize=None)
def quadrature_fns(act: Activation) -> dict[str, Callable]:
    """Jitted quadrature pieces of the mean field of `act` (compiled once per activation).

    Keys: "second_moment" q ↦ E φ², "second_moment_slope" its q-derivative, "mu" (q, k) ↦
    E φ′^{2k}, "pair" (c, q) ↦ ∫φ(u₁)φ(u₂), "pair_slope" (c, q) ↦ ∫φ′(u₁)φ′(u₂).
    """

    def second_moment(q):
        (z, w), sq = z_rule(act, q)
        return jnp.sum(w * act.fn(sq * z) ** 2)

    def mu(q, k):
        (z, w), sq = z_rule(act, q)
        return jnp.sum(w * act.dphi(sq * z) ** (2 * k))

    return dict(second_moment=jax.jit(second_moment),
                second_moment_slope=jax.jit(jax.grad(second_moment)),
                mu=jax.jit(mu, static_argnums=1),
                pair=jax.jit(lambda c, q: _pair(act, c, q, act.fn)),
                pair_slope=jax.jit(lambda c, q: _pair(act, c, q, act.dphi)))
