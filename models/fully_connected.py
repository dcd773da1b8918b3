"""Fully connected networks in the six variants of Table 1 of the ReZero paper.

With F(x) = φ(W x + b), one block maps x_i to x_{i+1} by

    plain      x_{i+1} = F(x_i)
    residual   x_{i+1} = x_i + F(x_i)
    norm       x_{i+1} = Norm(F(x_i))
    prenorm    x_{i+1} = x_i + F(Norm(x_i))
    postnorm   x_{i+1} = Norm(x_i + F(x_i))
    rezero     x_{i+1} = x_i + α_i F(x_i),   α_i = alpha_init (0 by default), trainable

Norm is LayerNorm. Weights are W_ij ~ N(0, σ_w²/width) (or σ_w·O with O Haar-orthogonal),
biases b_i ~ N(0, σ_b²). Defaults follow the paper's Figure 5: σ_w² = 2 (0.25 for `residual`),
σ_b² = 0.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from models._stack import Layers, Partitioning, Stack, activation, check_variant

VARIANTS = ("plain", "residual", "norm", "prenorm", "postnorm", "rezero")
WEIGHTS = ("gaussian", "orthogonal")


def default_sigma_w2(variant: str) -> float:
    """The paper's weight variance × width: 0.25 for `residual`, 2 otherwise."""
    return 0.25 if variant == "residual" else 2.0


class FrozenAlpha(nnx.Variable):
    """A residual weight α that the optimizer does not train (`train_alpha=False`)."""


class Block(nnx.Module):
    """One layer x_i ↦ x_{i+1} of a fully connected net (see the module docstring)."""

    def __init__(self, width: int, *, variant: str, activation_name: str, alpha_init: float,
                 train_alpha: bool, sigma_w2: float, sigma_b2: float, weights: str,
                 param_dtype, rngs: nnx.Rngs, partitioning: Partitioning | None = None):
        part = Partitioning() if partitioning is None else partitioning
        self.variant = variant
        self.phi = activation(activation_name)
        if weights == "orthogonal":
            kernel_init = nnx.initializers.orthogonal(scale=math.sqrt(sigma_w2))
        else:
            kernel_init = nnx.initializers.normal(stddev=math.sqrt(sigma_w2 / width))
        bias_init = (nnx.initializers.normal(stddev=math.sqrt(sigma_b2)) if sigma_b2 > 0
                     else nnx.initializers.zeros_init())
        self.linear = nnx.Linear(width, width, kernel_init=part.init(kernel_init, "fc_in", "fc_out"),
                                 bias_init=part.init(bias_init, "fc_out"),
                                 param_dtype=param_dtype, rngs=rngs)
        if variant in ("norm", "prenorm", "postnorm"):
            self.norm = part.layernorm(width, param_dtype=param_dtype, rngs=rngs)
        if variant == "rezero":
            alpha_type = nnx.Param if train_alpha else FrozenAlpha
            self.alpha = alpha_type(jnp.asarray(alpha_init, dtype=param_dtype))

    def branch(self, x):
        """F(x) = φ(W x + b)."""
        return self.phi(self.linear(x))

    def __call__(self, x):
        F = self.branch
        match self.variant:
            case "plain":
                return F(x)
            case "residual":
                return x + F(x)
            case "norm":
                return self.norm(F(x))
            case "prenorm":
                return x + F(self.norm(x))
            case "postnorm":
                return self.norm(x + F(x))
            case "rezero":
                return x + self.alpha * F(x)


class FullyConnected(Stack):
    """A depth × width fully connected net; optional input and output projections.

    Args:
      depth: number of blocks L.
      width: N, the width of every block.
      variant: one of "plain", "residual", "norm", "prenorm", "postnorm", "rezero".
      activation: "relu", "tanh", "linear", "gelu" or "hardtanh".
      alpha_init: initial α of every `rezero` block (0 gives J = I exactly).
      train_alpha: False stores α as a `FrozenAlpha` variable, outside `nnx.Param`.
      sigma_w2: weight variance × width (None: the paper's default for the variant).
      sigma_b2: bias variance (0: zero biases).
      weights: "gaussian" (W_ij ~ N(0, σ_w²/N)) or "orthogonal" (W = σ_w·O).
      in_features: if set, a linear input projection in_features → width (He-normal).
      out_features: if set, a linear output projection width → out_features (LeCun-normal).
      param_dtype: parameter dtype (float64 needs `jax_enable_x64`).
      remat: rematerialize each block on the backward pass (True, or a name from
        `jax.checkpoint_policies`): memory for depth, at the cost of recomputing the forward.
      unroll: blocks per scan iteration.
      mesh: a `jax.sharding.Mesh` to create the parameters sharded on (None: unsharded, as
        before). With a "model" axis every weight matrix is split over it on its input side
        (FSDP-style: no device holds a whole W); see `models.DEFAULT_SHARDING_RULES`.
      sharding_rules: overrides of the logical-axis rules ("fc_in", "fc_out", "layers", ...
        -> a mesh axis or None); needs `mesh`.
      rngs: `nnx.Rngs` for initialization.

    The L blocks are one `Layers` stack: `net.blocks.layers.linear.kernel` has shape
    (L, width, width) and a ReZero net's α shape (L,).

    Example:
      >>> net = FullyConnected(depth=32, width=256, variant="rezero", rngs=nnx.Rngs(0))
      >>> net(jnp.ones(256)).shape
      (256,)
    """

    def __init__(self, depth: int, width: int, *, variant: str = "rezero",
                 activation: str = "relu", alpha_init: float = 0.0, train_alpha: bool = True,
                 sigma_w2: float | None = None, sigma_b2: float = 0.0, weights: str = "gaussian",
                 in_features: int | None = None, out_features: int | None = None,
                 param_dtype=jnp.float32, remat: bool | str = False, unroll: int = 1,
                 mesh=None, sharding_rules=None, rngs: nnx.Rngs):
        check_variant("FullyConnected", variant, VARIANTS)
        part = Partitioning(mesh, sharding_rules)
        check_variant("FullyConnected weights", weights, WEIGHTS)
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be positive, got depth={depth}, width={width}")
        self.variant = variant
        self.depth = depth
        self.width = width
        sigma_w2 = default_sigma_w2(variant) if sigma_w2 is None else float(sigma_w2)
        self.blocks = Layers(
            lambda r: Block(width, variant=variant, activation_name=activation,
                            alpha_init=alpha_init, train_alpha=train_alpha, sigma_w2=sigma_w2,
                            sigma_b2=sigma_b2, weights=weights, param_dtype=param_dtype, rngs=r,
                            partitioning=part),
            depth, rngs=rngs, remat=remat, unroll=unroll, partitioning=part)
        self.input_proj = (nnx.Linear(in_features, width, param_dtype=param_dtype, rngs=rngs,
                                      kernel_init=part.init(nnx.initializers.he_normal(),
                                                            "fc_in", "fc_out"),
                                      bias_init=part.init(nnx.initializers.zeros_init(),
                                                          "fc_out"))
                           if in_features else None)
        self.output_proj = (nnx.Linear(width, out_features, param_dtype=param_dtype, rngs=rngs,
                                       kernel_init=part.init(nnx.initializers.lecun_normal(),
                                                             "fc_in", "fc_out"),
                                       bias_init=part.init(nnx.initializers.zeros_init(),
                                                           "fc_out"))
                            if out_features else None)

    def stack_stages(self) -> tuple:
        return (self.blocks,)

    def embed(self, x):
        return x if self.input_proj is None else self.input_proj(x)

    def head(self, x):
        return x if self.output_proj is None else self.output_proj(x)
