"""Finding the residual weights α of any model in its parameter pytree.

A leaf is an α when a key on its path is named `alpha` (models in `models/` name every
residual weight so; Linen or hand-written models can follow the same convention). The
helpers work on any pytree: an `nnx.State`, a Linen variables dict, nested dicts.

Scanned stacks keep one α leaf for all their layers, stacked on a leading axis under a key
named `layers` (`isometry.LAYER_AXIS_KEY`): `alpha_mask` marks the stacked leaf, and
`alpha_values` names every layer, `blocks/0/alpha`, `blocks/1/alpha`, … (the index takes the
place of the `layers` key).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from isometry._stack import LAYER_AXIS_KEY

__all__ = ["alpha_values", "alpha_mask", "is_alpha_path", "path_names"]

ALPHA_NAME = "alpha"


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_names(path) -> list[str]:
    """The key names on a pytree path, as strings, without nnx's `value` keys: the one reader
    of parameter paths (α, per-layer gradient norms, per-name learning rates).

    Dict keys, attribute names and sequence indices all give their name:

      >>> import jax
      >>> from flax import nnx
      >>> state = nnx.state(nnx.Sequential(nnx.Linear(1, 1, rngs=nnx.Rngs(0))))
      >>> [path_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
      [['layers', '0', 'bias'], ['layers', '0', 'kernel']]
    """
    return [name for name in map(_key_name, path) if name != "value"]


def is_alpha_path(path) -> bool:
    """True when one of the keys on a pytree path is named `alpha`."""
    return ALPHA_NAME in path_names(path)


def alpha_mask(params: Any) -> Any:
    """A pytree of bools like `params`: True on α leaves.

    Use it with optax to give α its own learning rate and no weight decay:

      >>> import optax
      >>> params = {"w": np.ones(2), "blocks": {"layers": {"alpha": np.zeros(2)}}}
      >>> alpha_mask(params)
      {'blocks': {'layers': {'alpha': True}}, 'w': False}
      >>> tx = optax.multi_transform(
      ...     {"alpha": optax.sgd(0.1), "rest": optax.adamw(0.01, weight_decay=1e-4)},
      ...     jax.tree.map(lambda a: "alpha" if a else "rest", alpha_mask(params)))
      >>> grads = jax.tree.map(np.ones_like, params)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> [round(float(u), 2) for u in updates["blocks"]["layers"]["alpha"]]  # sgd, lr 0.1
      [-0.1, -0.1]
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: is_alpha_path(p), params)


def alpha_values(params: Any) -> dict[str, np.ndarray]:
    """Every α of a model, one entry per layer, as {path: value}, in layer order.

    A stacked α (under a `layers` key, shape (L, …)) gives L entries, the layer index in
    place of the `layers` key.

    Example (a scanned stack of two layers, as `models` keeps its blocks):
      >>> params = {"w": np.ones(2), "blocks": {"layers": {"alpha": np.array([0.0, 0.5])}}}
      >>> {k: float(v) for k, v in alpha_values(params).items()}
      {'blocks/0/alpha': 0.0, 'blocks/1/alpha': 0.5}
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not is_alpha_path(path):
            continue
        names = path_names(path)
        value = np.asarray(leaf)
        if LAYER_AXIS_KEY not in names:
            out["/".join(names)] = value
            continue
        at = names.index(LAYER_AXIS_KEY)
        for i in range(value.shape[0]):
            out["/".join(names[:at] + [str(i)] + names[at + 1:])] = value[i]
    return out
