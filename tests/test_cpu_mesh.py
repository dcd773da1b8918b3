"""`unbatch_lapack`: batched SVD/eigh become loops over single matrices, results unchanged."""

import jax
import jax.numpy as jnp
import numpy as np

from isometry._cpu_mesh import batched_lapack_calls, unbatch_lapack


def _program(a):
    """Batched SVDs inside a jit, a while loop and a switch, under two vmaps, plus eigh."""
    def one(m):
        def body(carry):
            i, acc = carry
            s = jax.lax.switch(i % 2, [lambda x: jnp.linalg.svd(x, compute_uv=False),
                                       lambda x: 2.0 * jnp.linalg.svd(x, compute_uv=False)],
                               m + acc)
            return i + 1, acc + 1e-3 * s[0]
        _, acc = jax.lax.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros((), m.dtype)))
        u, s, vt = jax.jit(jnp.linalg.svd)(m)
        return acc, s, jnp.abs(u[:, 0]), jnp.linalg.eigh(m @ m.T)[0]
    return jax.vmap(jax.vmap(one))(a)


def test_results_are_the_same_and_no_lapack_call_takes_a_batch():
    a = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    before = jax.jit(_program).lower(a).compile().as_text()
    assert batched_lapack_calls(before)  # the plain program batches them
    rewritten = jax.jit(unbatch_lapack(_program))
    assert batched_lapack_calls(rewritten.lower(a).compile().as_text()) == []
    for got, want in zip(rewritten(a), jax.jit(_program)(a)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pytrees_in_and_out():
    f = unbatch_lapack(lambda d: {"s": jax.vmap(jnp.linalg.svd)(d["m"])[1], "n": d["n"] + 1})
    out = f({"m": jnp.eye(3)[None].repeat(2, 0), "n": jnp.ones(2)})
    np.testing.assert_allclose(out["s"], np.ones((2, 3)))
    np.testing.assert_allclose(out["n"], 2 * np.ones(2))
