"""Activations as objects: the function φ, its kinks and, where they exist, closed forms.

Closed forms belong to the activation object, never to its name: `theory.chi_1` of a user
function named `relu` uses quadrature on that function, and an `Activation` built with
`closed_forms=` uses them whatever it is called. `ACTIVATIONS` is the one table of named
activations (models build their nets from the same functions, `models.ACTIVATIONS`).

Closed forms (docs/theory.md §1), with a = 1/√q and N the standard normal density:

    linear     E φ(√q z)² = q,    φ′² = 1,               ∫Dz₁Dz₂ φ(u₁)φ(u₂) = q c
    ReLU       E φ(√q z)² = q/2,  φ′² ~ Bernoulli(1/2),  ∫Dz₁Dz₂ φ(u₁)φ(u₂) =
               q (√(1−c²) + (π − arccos c) c)/(2π)
    hard-tanh  E φ(√q z)² = q erf(a/√2) − 2√q N(a) + erfc(a/√2),  φ′² ~ Bernoulli(erf(a/√2))

Example:
    >>> act = resolve_activation("relu")
    >>> act.name, act.kinks, act.closed_forms.homogeneous
    ('relu', (0.0,), True)
    >>> resolve_activation(lambda h: h * 0.5).closed_forms is None     # quadrature only
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Activation", "ClosedForms", "ACTIVATIONS", "WEIGHTS", "Q_FLOOR", "resolve_activation"]

#: q = 0 is evaluated as this limit (φ′ of a vanishing pre-activation).
Q_FLOOR = 1e-30


@dataclasses.dataclass(frozen=True)
class ClosedForms:
    """Closed-form Gaussian statistics of one activation φ, h = √q z, z ~ N(0, 1).

    Attributes:
      second_moment: q ↦ E φ(h)² (the q-map is σ_w² · this + σ_b²).
      second_moment_slope: q ↦ ∂/∂q E φ(h)² = E [φ′² + φφ″](h).
      d2_atoms: q ↦ (values, weights) of the law of φ′(h)² (a few atoms).
      pair_moment: (c, q) ↦ ∫Dz₁Dz₂ φ(u₁)φ(u₂) (the c-map's integral), or None.
      pair_slope: (c, q) ↦ ∫Dz₁Dz₂ φ′(u₁)φ′(u₂) (χ_c/σ_w²), or None.
      homogeneous: φ(t h) = t φ(h) for t > 0 (linear, ReLU): the q-map is linear in q and the
        law of φ′ does not depend on q.
    """

    second_moment: Callable[[float], float]
    second_moment_slope: Callable[[float], float]
    d2_atoms: Callable[[float], tuple[np.ndarray, np.ndarray]]
    pair_moment: Callable[[float, float], float] | None = None
    pair_slope: Callable[[float, float], float] | None = None
    homogeneous: bool = False


@dataclasses.dataclass(frozen=True)
class Activation:
    """A pointwise nonlinearity φ, the points where φ′ jumps (its kinks) and its closed forms.

    Attributes:
      name: a label (the key in `ACTIVATIONS`, or the user function's name); never used to
        pick formulas.
      fn: the JAX function h ↦ φ(h), elementwise.
      kinks: pre-activations h where φ′ is discontinuous; quadrature splits there.
      closed_forms: `ClosedForms` of φ, or None (every statistic by quadrature).
    """

    name: str
    fn: Callable
    kinks: tuple[float, ...] = ()
    closed_forms: ClosedForms | None = None

    @property
    def phi(self) -> Callable:
        """φ itself (the same as `fn`)."""
        return self.fn

    def dphi(self, h):
        """φ′(h), elementwise, by autodiff."""
        return jnp.vectorize(jax.grad(self.fn))(h)


# --- closed forms ------------------------------------------------------------------------------


def _identity_moment(q: float) -> float:
    return q


def _half_moment(q: float) -> float:
    return q / 2


def _one(q: float) -> float:
    return 1.0


def _half(q: float) -> float:
    return 0.5


def _bernoulli(p: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([0.0, 1.0]), np.array([1 - p, p])


def _linear_atoms(q: float) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(1), np.ones(1)


def _relu_atoms(q: float) -> tuple[np.ndarray, np.ndarray]:
    return _bernoulli(0.5)


def _linear_pair(c: float, q: float) -> float:
    return q * c


def _linear_pair_slope(c: float, q: float) -> float:
    return 1.0


def _relu_pair(c: float, q: float) -> float:
    return q * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / (2 * math.pi)


def _relu_pair_slope(c: float, q: float) -> float:
    return (math.pi - math.acos(c)) / (2 * math.pi)


def _hardtanh_share(q: float) -> tuple[float, float, float]:
    """(a, N(a), erf(a/√2)) with a = 1/√q: the share of h = √q z inside (−1, 1) is erf(a/√2)."""
    a = 1.0 / math.sqrt(max(q, Q_FLOOR))
    return a, math.exp(-a * a / 2) / math.sqrt(2 * math.pi), math.erf(a / math.sqrt(2))


def _hardtanh_moment(q: float) -> float:
    a, pdf, e = _hardtanh_share(q)
    q = max(q, Q_FLOOR)
    return q * e - 2 * math.sqrt(q) * pdf + (1 - e)


def _hardtanh_slope(q: float) -> float:
    a, pdf, e = _hardtanh_share(q)
    return e - 2 * a * pdf  # ∫_{|z|<a} z² Dz


def _hardtanh_atoms(q: float) -> tuple[np.ndarray, np.ndarray]:
    return _bernoulli(_hardtanh_share(q)[2])


LINEAR = ClosedForms(_identity_moment, _one, _linear_atoms, _linear_pair, _linear_pair_slope,
                     homogeneous=True)
RELU = ClosedForms(_half_moment, _half, _relu_atoms, _relu_pair, _relu_pair_slope,
                   homogeneous=True)
HARDTANH = ClosedForms(_hardtanh_moment, _hardtanh_slope, _hardtanh_atoms)

#: The named activations (the functions `models.ACTIVATIONS` builds nets from), with their
#: kinks and closed forms.
ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", jax.nn.identity, (), LINEAR),
    "relu": Activation("relu", jax.nn.relu, (0.0,), RELU),
    "hardtanh": Activation("hardtanh", jax.nn.hard_tanh, (-1.0, 1.0), HARDTANH),
    "tanh": Activation("tanh", jnp.tanh),
    "gelu": Activation("gelu", jax.nn.gelu),
}
#: Weight laws: Gaussian W_ij ~ N(0, σ_w²/N) or orthogonal W = σ_w·O.
WEIGHTS = ("gaussian", "orthogonal")


def _with_kinks(act: Activation, kinks) -> Activation:
    """`act` with other declared kinks: a different piecewise function, so no closed forms."""
    kinks = tuple(sorted(float(k) for k in kinks))
    if kinks == act.kinks:
        return act
    return dataclasses.replace(act, kinks=kinks, closed_forms=None)


def resolve_activation(activation: str | Callable | Activation,
                       kinks: tuple[float, ...] | None = None) -> Activation:
    """An `Activation` from a name, an `Activation`, or a JAX function plus its kinks.

    A plain function gets no closed forms, whatever its name; declaring other kinks than an
    `Activation`'s drops its closed forms.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
      TypeError: anything else than a name, an `Activation` or a function.
    """
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} "
                             f"or pass a JAX function (with kinks=(...) if φ′ jumps)")
        activation = ACTIVATIONS[activation]
    if isinstance(activation, Activation):
        return activation if kinks is None else _with_kinks(activation, kinks)
    if callable(activation):
        return Activation(getattr(activation, "__name__", "custom"), activation,
                          tuple(sorted(float(k) for k in (kinks or ()))))
    raise TypeError(f"activation must be a name, an Activation or a function, got {activation!r}")
