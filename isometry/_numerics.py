"""Small numerical pieces shared by the engine, statistics and plots.

`log10_sigma` is the one place where log10 σ is taken: σ = 0 (a vanished direction) maps to
log10 of the dtype's smallest normal number instead of -inf, so histograms and summaries of
log10 σ never see -inf or NaN.

`resolution_of` and `numerically_zero` are the one definition of "below resolution": a σ of a
Jacobian with n_in inputs and n_out outputs below σ_max · ε · max(n_in, n_out) (numpy's
`matrix_rank` tolerance) is round-off of the SVD or of the products, indistinguishable from 0.
Every spectrum result counts such σ as zero (`zero_share`), and `diagnose` reports their share.

Examples:
    >>> import numpy as np
    >>> log10_sigma(np.array([1.0, 100.0]))
    array([0., 2.])
    >>> float(log10_sigma(np.array([0.0]))[0]) == float(np.log10(np.finfo(np.float64).tiny))
    True
    >>> floor = resolution_of(np.float64(2.0), 4, 4)
    >>> numerically_zero(np.array([1.0, 1e-17, 0.0]), floor).tolist()
    [False, True, True]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_setting", "log10_sigma", "tiny", "resolution_of", "numerically_zero"]


def tiny(x) -> float:
    """The smallest positive normal number of `x`'s floating dtype (float64 for non-floats)."""
    dtype = x.dtype if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else np.float64
    return float(np.finfo(dtype).tiny)


def log10_sigma(s):
    """log10 max(σ, tiny): numpy in, numpy out; a JAX array (or tracer) in, JAX out."""
    if isinstance(s, jax.Array):
        return jnp.log10(jnp.maximum(s, jnp.finfo(s.dtype).tiny))
    s = np.asarray(s)
    return np.log10(np.clip(s, tiny(s), None))


def resolution_of(sigma_max, n_in: int, n_out: int, dtype=None):
    """σ_max · ε · max(n_in, n_out), ε of `dtype` (default: σ_max's): the smallest σ an SVD (or
    the products of the matrix-free engine) in that dtype resolves; numpy or JAX like σ_max."""
    eps = float(jnp.finfo(sigma_max.dtype if dtype is None else dtype).eps)
    return sigma_max * eps * max(n_in, n_out)


def numerically_zero(s, floor):
    """Which σ count as zero: below `floor` (a `resolution_of`, broadcast against s), or 0 when
    the floor is 0 (every σ vanished). Numpy or JAX, like `s`."""
    return (s < floor) | (s == 0)


def check_setting(name: str, value, *, low=None, high=None, low_open: bool = False,
                  high_open: bool = False, integer: bool = False, optional: bool = False):
    """`value` if it lies in its valid range, else a ValueError naming the setting and the range.

    Args:
      name: the setting's name as the caller spells it (`chunk_size`).
      low, high: the bounds (None: unbounded); open bounds with `low_open` / `high_open`.
      integer: the value must be an int (bools are not).
      optional: None is allowed.

    Example:
      >>> check_setting("chunk_size", 4, low=1, integer=True)
      4
      >>> check_setting("rtol", 0.0, low=0, high=1, low_open=True, high_open=True)
      Traceback (most recent call last):
      ...
      ValueError: rtol must be in (0, 1), got 0.0
    """
    if value is None and optional:
        return value
    span = (("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
            + ("inf" if high is None else f"{high:g}") + (")" if high_open or high is None else "]"))
    kind = "an integer" if integer else "a number"
    where = f"in {span}" if (low is not None or high is not None) else ""
    if integer and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ValueError(f"{name} must be {kind} {where}".rstrip() + f", got {value!r}"
                         + (" (None is allowed)" if optional else ""))
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
        raise ValueError(f"{name} must be {kind} {where}".rstrip() + f", got {value!r}")
    ok = value == value  # NaN is never in range
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value
