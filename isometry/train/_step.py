"""The jitted steps: one optimizer step on a batch, and the held-out evaluation.

Losses: softmax cross-entropy in nats (mean over examples, or over tokens for language
models); accuracy; bits per byte = cross-entropy / ln 2 for byte-level language models.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from isometry.train._optimizer import with_standard_promotion

__all__ = ["make_train_step", "make_eval_step", "evaluate", "prepare_inputs"]

def _losses(logits, y):
    """Per-example (per-token) cross-entropy in nats and correctness."""
    y = jnp.asarray(y)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return ce, jnp.argmax(logits, axis=-1).astype(y.dtype) == y


def make_train_step(graphdef, tx: optax.GradientTransformation, *,
                    donate: bool = False) -> Callable:
    """A jitted `(params, rest, opt_state, x, y) -> (params, rest, opt_state, metrics)`.

    metrics: {"loss": mean cross-entropy (nats), "accuracy": share of argmax hits,
    "grad_norm": global gradient norm before clipping}. Works for classification (logits
    (B, C), y (B,)) and language models (logits (B, T, V), y (B, T)).

    `donate=True` lets XLA write the new parameters and optimizer state into the buffers of
    the old ones (`donate_argnums`): one copy of each fewer at the peak, which is what a
    10,000-layer net needs; the arrays passed in are invalid after the call.
    """

    optimizer = with_standard_promotion(tx)  # any optax transformation, strict promotion or not

    def loss_fn(model, x, y):
        ce, hit = _losses(model(x), y)
        return jnp.mean(ce), jnp.mean(hit)

    @functools.partial(jax.jit, donate_argnums=(0, 2) if donate else ())
    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)
        # nnx.value_and_grad: gradients w.r.t. the nnx.Params; BatchNorm statistics and RNG
        # counts the forward pass updates stay in `model`
        (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        rest = nnx.state(model, nnx.Not(nnx.Param))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, rest, opt_state, {"loss": loss, "accuracy": acc,
                                         "grad_norm": optax.tree.norm(grads)}

    return step


def make_eval_step(graphdef) -> Callable:
    """A jitted `(params, rest, x, y) -> (sum of cross-entropies, hits, count)` (eval mode)."""

    @jax.jit
    def evaluate(params, rest, x, y):
        ce, hit = _losses(nnx.merge(graphdef, params, rest)(x), y)
        return jnp.sum(ce), jnp.sum(hit), ce.size

    return evaluate


def prepare_inputs(x, input_shape: tuple | None, dtype) -> np.ndarray:
    """A batch as the model takes it: each example reshaped to `input_shape` (None: as it is),
    floating inputs cast to the parameters' `dtype` (integer tokens stay integers).

    >>> prepare_inputs(np.zeros((2, 2, 3), np.uint8), (6,), np.float32).shape
    (2, 6)
    >>> prepare_inputs(np.zeros((2, 3)), None, np.float32).dtype
    dtype('float32')
    """
    x = np.asarray(x)
    if input_shape is not None:
        x = x.reshape(len(x), *input_shape)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x


def evaluate(eval_step, params, rest, data, batch_size, max_batches, prepare,
             task_kind) -> dict:
    """Mean held-out loss and accuracy (and bits per byte for language models); {}: no data."""
    total = hits = count = 0.0
    for x, y in data.eval_batches(batch_size, max_batches):
        s, h, c = eval_step(params, rest, prepare(x), y)
        total, hits, count = total + float(s), hits + float(h), count + int(c)
    if not count:
        return {}
    out = {"eval_loss": total / count, "eval_accuracy": hits / count}
    if task_kind == "language_model":
        out["eval_bpb"] = out["eval_loss"] / math.log(2)
    return out
