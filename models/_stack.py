"""The shape every model in `models/` shares: embed → blocks → head.

    x_0 = embed(input);  x_{l+1} = block_l(x_l), l = 0..L−1;  output = head(x_L)

`hidden_states` returns [x_0, …, x_L] so the engine can take ∂x_l/∂x_0 at every depth
(`isometry` never imports `models`; it only calls these methods).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
    "gelu": jax.nn.gelu,
    "hardtanh": lambda x: jnp.clip(x, -1.0, 1.0),
}


def activation(name: str):
    """The activation function called `name` (clear error for an unknown one)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_variant(model: str, variant: str, allowed: tuple[str, ...]) -> str:
    """Returns `variant` or raises a ValueError that lists the allowed names."""
    if variant not in allowed:
        raise ValueError(f"unknown {model} variant {variant!r}; use one of {list(allowed)}")
    return variant


class Identity(nnx.Module):
    """x ↦ x: stands in for a normalization a variant does without."""

    def __call__(self, x):
        return x


class Stack(nnx.Module):
    """Base class: subclasses set `self.blocks` (an `nnx.List`) and may override embed/head."""

    blocks: nnx.List

    def embed(self, x):
        return x

    def head(self, x):
        return x

    def stack(self, x):
        """The residual stack alone: x_0 ↦ x_L."""
        for block in self.blocks:
            x = block(x)
        return x

    def hidden_states(self, x) -> list:
        """[x_0, x_1, …, x_L]: the stream after the embedding and after every block."""
        xs = [self.embed(x)]
        for block in self.blocks:
            xs.append(block(xs[-1]))
        return xs

    def __call__(self, x):
        return self.head(self.stack(self.embed(x)))
