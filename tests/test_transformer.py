"""models.Transformer: masks, the language model, dropout, α sharing, initialization."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
from models import Transformer
from models.transformer import sinusoidal_positions

F64 = jnp.float64
T, D = 3, 8


def encoder(variant="postnorm", **kw):
    kw.setdefault("heads", 2)
    return Transformer(2, D, ffn=12, variant=variant, param_dtype=F64, rngs=nnx.Rngs(0), **kw)


def stream(batch=(), seed=1):
    return jax.random.normal(jax.random.key(seed), (*batch, T, D), F64)


def test_padding_mask_hides_padded_keys():
    model = encoder("postnorm")
    x = stream((1,))
    keep = jnp.array([[True, True, False]])
    y = model(x, padding_mask=keep)
    x_changed = x.at[:, 2].add(5.0)
    y_changed = model(x_changed, padding_mask=keep)
    np.testing.assert_allclose(y_changed[:, :2], y[:, :2], rtol=1e-12, atol=1e-12)
    assert not np.allclose(model(x_changed)[:, :2], model(x)[:, :2])  # without the mask it leaks


def test_decoder_language_model():
    """Token ids → √d·Embed + sinusoidal positions → causal layers → logits."""
    lm = Transformer(2, D, heads=2, ffn=12, variant="rezero", alpha_init=0.5, vocab_size=11,
                     causal=True, param_dtype=F64, rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    logits = lm(tokens)
    assert logits.shape == (2, 4, 11) and np.all(np.isfinite(logits))
    changed = lm(tokens.at[:, -1].set(0))              # the future does not leak backwards
    np.testing.assert_array_equal(changed[:, :-1], logits[:, :-1])
    assert not np.allclose(changed[:, -1], logits[:, -1])
    pe = np.asarray(sinusoidal_positions(4, D, F64))
    np.testing.assert_array_equal(pe[0], [0, 1] * (D // 2))
    np.testing.assert_allclose(pe[3, 2], math.sin(3 / 10000 ** (2 / D)), rtol=1e-14)
    np.testing.assert_allclose(pe[3, 5], math.cos(3 / 10000 ** (4 / D)), rtol=1e-14)
    np.testing.assert_allclose(lm.embed(tokens), math.sqrt(D) * lm.embedding(tokens) + pe[None],
                               rtol=1e-14)
    with pytest.raises(TypeError, match="integer token"):
        lm(tokens.astype(F64))


def test_dropout_in_train_mode_only():
    model = encoder("postnorm", dropout=0.5)
    x = stream()
    assert not np.allclose(model(x), model(x))      # train mode: fresh masks each call
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    reference = encoder("postnorm")
    nnx.update(reference, nnx.state(model, nnx.Param))
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-12)  # eval = no dropout


def test_one_alpha_per_layer_or_per_sublayer():
    shared = encoder("rezero")
    assert [a.shape for a in iso.alpha_values(nnx.state(shared)).values()] == [(), ()]
    split = encoder("rezero", alpha_per_sublayer=True)
    alphas = iso.alpha_values(nnx.state(split))
    assert [a.shape for a in alphas.values()] == [(2,), (2,)]
    x = stream()
    np.testing.assert_array_equal(split(x), x)          # α = 0: the identity

    def loss(model):
        return jnp.sum(model(x) * jnp.sin(x))

    grads = iso.alpha_values(nnx.state(nnx.grad(loss)(split)))
    assert len(grads) == 2 and all(np.all(g != 0) for g in grads.values())  # both sublayers


def test_rezero_with_layernorm_keeps_identity_at_zero():
    model = encoder("rezero", layernorm=True)
    assert isinstance(model.blocks.layer(0).norm1, nnx.LayerNorm)
    x = stream()
    np.testing.assert_array_equal(iso.dense_jacobian(model, x), np.eye(T * D))
    model_half = encoder("rezero", layernorm=True, alpha_init=0.5, activation="gelu")
    assert not np.allclose(model_half(x), x)


def test_xavier_uniform_weights():
    model = Transformer(1, 16, heads=4, ffn=64, variant="postnorm", rngs=nnx.Rngs(0))
    for w, fan_in, fan_out in [(model.blocks.layer(0).attention.qkv.kernel, 16, 48),
                               (model.blocks.layer(0).feed_forward.linear1.kernel, 16, 64)]:
        w = np.asarray(w[...])
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
        # variance of U(−b, b) is b²/3; relative standard error of a sample variance ≈ √(0.8/n)
        assert abs(w.var() / (bound**2 / 3) - 1) < 5 * math.sqrt(0.8 / w.size)
    np.testing.assert_array_equal(model.blocks.layer(0).attention.qkv.bias[...], 0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="must divide d_model"):
        Transformer(1, 10, heads=3, ffn=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown Transformer variant"):
        Transformer(1, 8, heads=2, ffn=4, variant="residual", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant='rezero' only"):
        Transformer(1, 8, heads=2, ffn=4, variant="postnorm", alpha_per_sublayer=True,
                    rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_model=8"):
        encoder()(jnp.ones((T, 5), F64))
