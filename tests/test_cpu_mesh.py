"""`unbatch_lapack` and `lapack_safe`: batched SVD/eigh become loops over single matrices,
results unchanged, in every compiled program of the engines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry.linalg._lapack import batched_lapack_calls, lapack_safe, unbatch_lapack


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


def test_lapack_safe_unbatches_on_the_cpu_and_keeps_the_values():
    f = jax.vmap(lambda m: jnp.linalg.svd(m, compute_uv=False))
    a = jax.random.normal(jax.random.key(2), (3, 4, 4))
    safe = jax.jit(lapack_safe(f))
    assert batched_lapack_calls(jax.jit(f).lower(a).compile().as_text())
    assert batched_lapack_calls(safe.lower(a).compile().as_text()) == []
    np.testing.assert_array_equal(safe(a), jax.jit(f)(a))  # the same LAPACK routine per matrix


@pytest.mark.parametrize("method", ["dense", "lanczos"])
@pytest.mark.parametrize("probes", [2, 4, 8])
def test_no_compiled_spectrum_program_batches_lapack(method, probes):
    """Two batched SVDs running at once deadlocked the 2-core CPU (isometry train --model
    resnet hung at step 0 with 2 to 8 probes): every program of the engines calls LAPACK one
    matrix at a time, however many probes."""
    net = models.FullyConnected(depth=3, width=6, rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(0), (probes, 6), jnp.float32)
    options = {"num_steps": 4, "num_probes": 2, "k": 2, "max_steps": 6} if method == "lanczos" else {}
    sfn = iso.spectrum_fn(apply_fn, method, batched=True, **options)
    hlo = sfn.program.lower(params, x, jax.random.key(1)).compile().as_text()
    assert "lapack_" in hlo and batched_lapack_calls(hlo) == []


def test_layerwise_programs_call_lapack_one_matrix_at_a_time():
    _, states_fn, params = iso.from_stack(models.FullyConnected(depth=3, width=6, rngs=nnx.Rngs(0)))
    x0 = jax.random.normal(jax.random.key(0), (4, 6), jnp.float32)
    lfn = iso.layerwise_spectrum_fn(states_fn, batched=True)
    spectra = lfn(params, x0)
    assert spectra.singular_values.shape == (4, 4, 6)  # 4 probes x (J_0 = I, J_1..J_3)
    np.testing.assert_allclose(spectra.singular_values[:, 0], 1.0, rtol=1e-6)
    hlo = lfn.program.lower(params, x0).compile().as_text()
    assert "lapack_" in hlo and batched_lapack_calls(hlo) == []
