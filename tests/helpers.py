"""Constructions with known spectra, and waits on a running process, shared by the tests."""

import json
import time

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


def wait_until(ready, proc=None, *, what: str = "the awaited state", timeout: float = 900.0,
               poll: float = 0.005) -> None:
    """Polls `ready()` until it is true: a wait on a state the test can observe (a record in
    metrics.jsonl, a checkpoint on disk), not on a clock. Fails, with the end of the process's
    stderr, if `proc` ends before that state is reached. `timeout` is only a safety net against
    a hung process (far above any expected run time), never a deadline the test relies on."""
    end = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise AssertionError(f"the process ended (exit code {proc.returncode}) before "
                                 f"{what}:\n{err[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s (hung?)")
        time.sleep(poll)


def last_step(metrics_path) -> int | None:
    """The step of the last complete record of a metrics.jsonl (None: no complete record)."""
    try:
        with open(metrics_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    complete = data[: data.rfind(b"\n") + 1].splitlines()
    return json.loads(complete[-1])["step"] if complete else None
