"""Constructions with known spectra, shared by the tests."""

import jax
import jax.numpy as jnp


def known_spectrum_map(key, s, n_in: int, n_out: int, dtype=jnp.float64):
    """x ↦ Q2[:, :k] diag(s) Q1[:k, :] x with Haar Q's: singular values exactly `s` (k = len(s))."""
    k1, k2 = jax.random.split(key)
    q1 = jax.random.orthogonal(k1, n_in, dtype=dtype)[: len(s)]
    q2 = jax.random.orthogonal(k2, n_out, dtype=dtype)[:, : len(s)]
    s = jnp.asarray(s, dtype)
    matrix = q2 @ (s[:, None] * q1)
    return (lambda x: matrix @ x), matrix


def count_traces(fn):
    """Wraps fn so that `wrapper.traces` counts how often JAX traced it (Python calls)."""

    def wrapper(*args):
        wrapper.traces += 1
        return fn(*args)

    wrapper.traces = 0
    return wrapper
