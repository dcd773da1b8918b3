"""Dense Jacobians and the matrix-free operator against constructions with known Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
from helpers import known_spectrum_map

TOL = {jnp.float32: 1e-5, jnp.float64: 1e-12}


def _tanh_net(key, n_in, n_out):
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (7, n_in)) / np.sqrt(n_in)
    w2 = jax.random.normal(k2, (n_out, 7)) / np.sqrt(7)
    return lambda x: w2 @ jnp.tanh(w1 @ x)


@pytest.mark.parametrize("n_in,n_out", [(5, 5), (3, 9), (9, 3)])
def test_fwd_equals_rev_and_reference(n_in, n_out):
    fn = _tanh_net(jax.random.key(0), n_in, n_out)
    x = jax.random.normal(jax.random.key(1), (n_in,))
    j_fwd = iso.dense_jacobian(fn, x, mode="fwd")
    j_rev = iso.dense_jacobian(fn, x, mode="rev")
    assert j_fwd.shape == (n_out, n_in)
    np.testing.assert_allclose(j_fwd, j_rev, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(j_fwd, jax.jacfwd(fn)(x), rtol=1e-12, atol=1e-14)


def test_chunked_equals_vmapped():
    fn = _tanh_net(jax.random.key(2), 11, 11)
    x = jax.random.normal(jax.random.key(3), (11,))
    for mode in ("fwd", "rev"):
        full = iso.dense_jacobian(fn, x, mode=mode)
        chunked = iso.dense_jacobian(fn, x, mode=mode, chunk_size=4)
        np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-14)


def test_pytree_input_and_output():
    def fn(tree):
        a, b = tree["a"], tree["b"]
        return (jnp.sin(a) * b.sum(), {"c": a[:2] * 3.0})

    x = {"a": jnp.array([0.3, -1.2, 2.0]), "b": jnp.array([[1.0, 2.0], [0.5, -0.1]])}
    j = iso.dense_jacobian(fn, x)
    # The flat layout is ravel_pytree's: inputs a (3) then b (4); outputs sin(a)*Σb (3) then c (2).
    flat_x, unravel = jax.flatten_util.ravel_pytree(x)
    ref = jax.jacfwd(lambda v: jax.flatten_util.ravel_pytree(fn(unravel(v)))[0])(flat_x)
    assert j.shape == (5, 7)
    np.testing.assert_allclose(j, ref, rtol=1e-12)


def test_operator_products_match_dense():
    fn = _tanh_net(jax.random.key(4), 6, 8)
    x = jax.random.normal(jax.random.key(5), (6,))
    op = iso.jacobian_operator(fn, x)
    j = iso.dense_jacobian(fn, x)
    v = jax.random.normal(jax.random.key(6), (6,))
    u = jax.random.normal(jax.random.key(7), (8,))
    assert (op.n_in, op.n_out) == (6, 8)
    np.testing.assert_allclose(op.matvec(v), j @ v, rtol=1e-12)
    np.testing.assert_allclose(op.rmatvec(u), j.T @ u, rtol=1e-12)


def test_known_matrix_is_recovered():
    fn, matrix = known_spectrum_map(jax.random.key(8), [3.0, 2.0, 0.5], n_in=6, n_out=4)
    np.testing.assert_allclose(iso.dense_jacobian(fn, jnp.ones(6)), matrix, rtol=1e-12, atol=1e-14)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown Jacobian mode 'sideways'"):
        iso.dense_jacobian(jnp.sin, jnp.ones(3), mode="sideways")
