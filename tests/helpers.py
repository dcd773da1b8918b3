"""Constructions with known spectra, shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from isometry.linalg._jacobian import jacobian_operator


def known_spectrum_map(key, s, n_in: int, n_out: int, dtype=jnp.float64):
    """x ↦ Q2[:, :k] diag(s) Q1[:k, :] x with Haar Q's: singular values exactly `s` (k = len(s))."""
    k1, k2 = jax.random.split(key)
    q1 = jax.random.orthogonal(k1, n_in, dtype=dtype)[: len(s)]
    q2 = jax.random.orthogonal(k2, n_out, dtype=dtype)[:, : len(s)]
    s = jnp.asarray(s, dtype)
    matrix = q2 @ (s[:, None] * q1)
    return (lambda x: matrix @ x), matrix


N_KNOWN = 400
KNOWN_SPECTRA = {
    # a spread spectrum: slow, steady convergence
    "linear": jnp.linspace(1.0, 0.01, N_KNOWN),
    # ten top values 0.2 % apart: the gap bound of each is useless, the cluster bound is not
    "clustered": jnp.concatenate([10 * (1 - 0.002 * jnp.arange(10.0)),
                                  jnp.linspace(9.0, 0.1, N_KNOWN - 10)]),
    # Hilbert-like: twelve decades, condition number 1e12
    "hilbert": jnp.logspace(0, -12, N_KNOWN),
    "sqrt": 1 / jnp.sqrt(jnp.arange(1.0, N_KNOWN + 1)),
}


def known_operator(name):
    """(σ, the matrix, its `jacobian_operator`) for a spectrum of `KNOWN_SPECTRA`."""
    s = KNOWN_SPECTRA[name]
    fn, matrix = known_spectrum_map(jax.random.key(1), s, N_KNOWN, N_KNOWN)
    return s, matrix, jacobian_operator(fn, jnp.ones(N_KNOWN))


def fewest_columns(b_matrix, s, k, rtol, sizes):
    """The first size n in `sizes` at which the top-k singular values of B's leading n × n
    block are within rtol of the true σ (`s`, descending)."""
    b_matrix = np.asarray(b_matrix)
    for n in sizes:
        theta = np.linalg.svd(b_matrix[:n, :n], compute_uv=False)[:k]
        if np.max((s[:k] - theta) / s[:k]) <= rtol:
            return n
    raise AssertionError("not reached")


def count_traces(fn):
    """Wraps fn so that `wrapper.traces` counts how often JAX traced it (Python calls)."""

    def wrapper(*args):
        wrapper.traces += 1
        return fn(*args)

    wrapper.traces = 0
    return wrapper
