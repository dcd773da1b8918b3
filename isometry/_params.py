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

__all__ = ["alpha_values", "alpha_mask", "is_alpha_path"]

ALPHA_NAME = "alpha"


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def is_alpha_path(path) -> bool:
    """True when one of the keys on a pytree path is named `alpha`."""
    return any(_key_name(k) == ALPHA_NAME for k in path)


def alpha_mask(params: Any) -> Any:
    """A pytree of bools like `params`: True on α leaves.

    Use it with optax to give α its own learning rate and no weight decay:

      >>> tx = optax.multi_transform(
      ...     {"alpha": optax.adagrad(alpha_lr), "rest": optax.adamw(lr, weight_decay=1e-4)},
      ...     jax.tree.map(lambda a: "alpha" if a else "rest", iso.alpha_mask(params)))
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: is_alpha_path(p), params)


def alpha_values(params: Any) -> dict[str, np.ndarray]:
    """Every α of a model, one entry per layer, as {path: value}, in layer order.

    A stacked α (under a `layers` key, shape (L, …)) gives L entries, the layer index in
    place of the `layers` key.

    Example:
      >>> net = models.FullyConnected(3, 8, variant="rezero", rngs=nnx.Rngs(0))
      >>> list(iso.alpha_values(nnx.state(net)))
      ['blocks/0/alpha', 'blocks/1/alpha', 'blocks/2/alpha']
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not is_alpha_path(path):
            continue
        names = [_key_name(k) for k in path if _key_name(k) != "value"]
        value = np.asarray(leaf)
        if LAYER_AXIS_KEY not in names:
            out["/".join(names)] = value
            continue
        at = names.index(LAYER_AXIS_KEY)
        for i in range(value.shape[0]):
            out["/".join(names[:at] + [str(i)] + names[at + 1:])] = value[i]
    return out
