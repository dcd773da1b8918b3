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
σ_b² = 0. `FullyConnectedConfig` holds every setting; `input_activation` and `torch_init`
give the details of the authors' PyTorch notebooks (see `FullyConnected`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models._stack import (Layers, Partitioning, Stack, activation, check_alpha_init,
                           check_variant, remat_policy, uniform_init)

VARIANTS = ("plain", "residual", "norm", "prenorm", "postnorm", "rezero")
#: The variants with a trainable α (the only ones `alpha_init` applies to).
ALPHA_VARIANTS = ("rezero",)
WEIGHTS = ("gaussian", "orthogonal")
#: PyTorch's `kaiming_normal_` (the notebooks' input layer): N(0, 2/fan_in), not truncated.
KAIMING_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def default_sigma_w2(variant: str) -> float:
    """The paper's weight variance × width: 0.25 for `residual`, 2 otherwise."""
    return 0.25 if variant == "residual" else 2.0


def torch_linear_init(fan_in: int):
    """PyTorch's `nn.Linear` default for weights and biases: U(−1/√fan_in, 1/√fan_in)."""
    return uniform_init(1.0 / math.sqrt(fan_in))


@dataclasses.dataclass(frozen=True)
class FullyConnectedConfig:
    """Every setting of a `FullyConnected` net (the model's keyword arguments, one place).

    Attributes:
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
      input_activation: x_0 = φ(W_in x + b_in), the notebooks' `relu(linear_input(x))`
        (needs `in_features`; default False: x_0 = W_in x + b_in).
      torch_init: PyTorch's initialization of the notebooks: every bias (input, blocks,
        output) and the output weights U(−1/√fan_in, 1/√fan_in) as `nn.Linear`'s default, the
        input weights untruncated N(0, 2/in_features) as `kaiming_normal_` (default False:
        zero biases, or N(0, σ_b²), He-normal input and LeCun-normal output weights, both
        truncated). The blocks' weights are N(0, σ_w²/N) either way.
      param_dtype: parameter dtype (float64 needs `jax_enable_x64`).
      remat: rematerialize each block on the backward pass (True, or a name from
        `jax.checkpoint_policies`): memory for depth, at the cost of recomputing the forward.
      unroll: blocks per scan iteration.

    Example:
      >>> cfg = FullyConnectedConfig(depth=2, width=4, variant="residual")
      >>> cfg.resolved().sigma_w2, FullyConnected.from_config(cfg, rngs=nnx.Rngs(0)).config == cfg
      (0.25, True)
    """

    depth: int
    width: int
    variant: str = "rezero"
    activation: str = "relu"
    alpha_init: float = 0.0
    train_alpha: bool = True
    sigma_w2: float | None = None
    sigma_b2: float = 0.0
    weights: str = "gaussian"
    in_features: int | None = None
    out_features: int | None = None
    input_activation: bool = False
    torch_init: bool = False
    param_dtype: Any = jnp.float32
    remat: bool | str = False
    unroll: int = 1

    def __post_init__(self):
        check_variant("FullyConnected", self.variant, VARIANTS)
        check_alpha_init("FullyConnected", self.variant, self.alpha_init, ALPHA_VARIANTS)
        check_variant("FullyConnected weights", self.weights, WEIGHTS)
        activation(self.activation)  # an unknown name fails here, not at the first call
        remat_policy(self.remat)
        if self.depth < 1 or self.width < 1:
            raise ValueError(f"depth and width must be positive, got depth={self.depth}, "
                             f"width={self.width}")
        if self.input_activation and not self.in_features:
            raise ValueError("input_activation applies φ after the input projection: it needs "
                             "in_features=")
        if self.torch_init and self.sigma_b2 > 0:
            raise ValueError("torch_init draws the biases U(−1/√fan_in, 1/√fan_in); leave "
                             "sigma_b2 at 0 or drop torch_init")

    def resolved(self) -> FullyConnectedConfig:
        """The same net with every default spelled out (σ_w² of the variant)."""
        sigma_w2 = default_sigma_w2(self.variant) if self.sigma_w2 is None else float(self.sigma_w2)
        return dataclasses.replace(self, sigma_w2=sigma_w2)

    def bias_init(self, fan_in: int, *, projection: bool = False):
        """The biases' initializer of a layer with `fan_in` inputs (a projection's: zeros,
        or PyTorch's with `torch_init`; a block's: N(0, σ_b²) when σ_b² > 0)."""
        if self.torch_init:
            return torch_linear_init(fan_in)
        if self.sigma_b2 > 0 and not projection:
            return nnx.initializers.normal(stddev=math.sqrt(self.sigma_b2))
        return nnx.initializers.zeros_init()


def dense(config: FullyConnectedConfig, fan_in: int, fan_out: int, kernel_init, *,
          part: Partitioning, rngs: nnx.Rngs, projection: bool = False) -> nnx.Linear:
    """W x + b, fan_in → fan_out, sharded on ("fc_in", "fc_out") when `part` has a mesh."""
    bias_init = config.bias_init(fan_in, projection=projection)
    return nnx.Linear(fan_in, fan_out, kernel_init=part.init(kernel_init, "fc_in", "fc_out"),
                      bias_init=part.init(bias_init, "fc_out"),
                      param_dtype=config.param_dtype, rngs=rngs)


class FrozenAlpha(nnx.Variable):
    """A residual weight α that the optimizer does not train (`train_alpha=False`)."""


#: flax's LayerNorm epsilon, for the variants without a norm (their LayerNorm is not used).
FC_NORM_EPSILON = 1e-6
#: Fully connected variants as data, x ↦ post(r · x + a · φ(W pre(x) + b)) per block, with
#: pre/post a LayerNorm or the identity: (r, pre, post); a = α for rezero, else 1.
FC_VARIANT_FLAGS = {"plain": (0, False, False), "residual": (1, False, False),
                    "norm": (0, False, True), "prenorm": (1, True, False),
                    "postnorm": (1, False, True), "rezero": (1, False, False)}


def fc_block(x, branch, norm, flags: tuple, alpha=None):
    """One block, x ↦ post(r · x + α · F(pre(x))), F = `branch`, pre/post `norm` or the
    identity, `flags` = (r, pre, post) of `FC_VARIANT_FLAGS` (α None: 1) — the one definition
    behind `Block` and `fc_blocks_apply_fn`.

    Python flags (one variant, `Block`) trace only that variant's operations, so
    `plain` is F(x) and `rezero` x + α F(x); array flags (`fc_blocks_as_data`) compute
    both sides of each choice and `where` picks one (the Jacobian of the unused side never
    enters), one program for every variant.
    """
    residual, pre, post = flags

    def maybe_norm(flag, h):
        if isinstance(flag, bool):
            return norm(h) if flag else h
        return jnp.where(flag, norm(h), h)

    y = branch(maybe_norm(pre, x))
    y = y if alpha is None else alpha * y
    if isinstance(residual, int):
        y = x + y if residual else y
    else:
        y = residual * x + y
    return maybe_norm(post, y)


class Block(nnx.Module):
    """One layer x_i ↦ x_{i+1} of a fully connected net (see the module docstring).

    Args:
      config: the net's configuration, resolved (`FullyConnectedConfig.resolved`).
      rngs: `nnx.Rngs` for initialization.
      partitioning: the net's `Partitioning` (None: unsharded).
    """

    def __init__(self, config: FullyConnectedConfig, *, rngs: nnx.Rngs,
                 partitioning: Partitioning | None = None):
        part = Partitioning.given(partitioning)
        width, dtype = config.width, config.param_dtype
        self.variant = config.variant
        self.phi = activation(config.activation)
        if config.weights == "orthogonal":
            kernel_init = nnx.initializers.orthogonal(scale=math.sqrt(config.sigma_w2))
        else:
            kernel_init = nnx.initializers.normal(stddev=math.sqrt(config.sigma_w2 / width))
        self.linear = dense(config, width, width, kernel_init, part=part, rngs=rngs)
        if config.variant in ("norm", "prenorm", "postnorm"):
            self.norm = part.layernorm(width, param_dtype=dtype, rngs=rngs)
        if config.variant == "rezero":
            alpha_type = nnx.Param if config.train_alpha else FrozenAlpha
            self.alpha = alpha_type(jnp.asarray(config.alpha_init, dtype=dtype))

    def branch(self, x):
        """F(x) = φ(W x + b)."""
        return self.phi(self.linear(x))

    def __call__(self, x):
        return fc_block(x, self.branch, getattr(self, "norm", None),
                        FC_VARIANT_FLAGS[self.variant], getattr(self, "alpha", None))


class FullyConnected(Stack):
    """A depth × width fully connected net; optional input and output projections.

    Args:
      depth: number of blocks L.
      width: N, the width of every block.
      mesh: a `jax.sharding.Mesh` to create the parameters sharded on (None: unsharded, as
        before). With a "model" axis every weight matrix is split over it on its input side
        (FSDP-style: no device holds a whole W); see `models.DEFAULT_SHARDING_RULES`.
      sharding_rules: overrides of the logical-axis rules ("fc_in", "fc_out", "layers", ...
        -> a mesh axis or None); needs `mesh`.
      rngs: `nnx.Rngs` for initialization.
      **options: the other fields of `FullyConnectedConfig` (variant, activation, alpha_init,
        train_alpha, sigma_w2, sigma_b2, weights, in_features, out_features,
        input_activation, torch_init, param_dtype, remat, unroll), with its defaults.
        `FullyConnected.from_config(config, rngs=...)` builds from a config; `net.config`
        is the config the net was built from.

    The L blocks are one `Layers` stack: `net.blocks.layers.linear.kernel` has shape
    (L, width, width) and a ReZero net's α shape (L,).

    The authors' notebooks (Figure 5) differ from the defaults in two details, each an option:
    `input_activation=True` applies φ after the input layer (`relu(linear_input(x))`; by
    default x_0 is the projection itself), and `torch_init=True` initializes as PyTorch does
    (every bias and the output weights U(−1/√fan_in, 1/√fan_in), `nn.Linear`'s default; the
    input weights untruncated Kaiming-normal; by default biases are zero, the input and
    output weights truncated He- and LeCun-normal). The blocks' weights are the same either
    way. Both options together build the notebooks' net.

    Example:
      >>> net = FullyConnected(depth=32, width=16, variant="rezero", rngs=nnx.Rngs(0))
      >>> net(jnp.ones(16)).shape, net.blocks.layers.linear.kernel.shape
      ((16,), (32, 16, 16))
      >>> authors = FullyConnected(4, 8, in_features=6, out_features=3, input_activation=True,
      ...                          torch_init=True, rngs=nnx.Rngs(0))
      >>> bool(jnp.all(authors.embed(-jnp.ones(6)) >= 0)), authors(jnp.ones(6)).shape
      (True, (3,))
    """

    def __init__(self, depth: int, width: int, *, mesh=None, sharding_rules=None,
                 rngs: nnx.Rngs, **options):
        config = FullyConnectedConfig(depth, width, **options)
        part = Partitioning(mesh, sharding_rules)
        cfg = config.resolved()
        self.config = config
        self.variant, self.depth, self.width = cfg.variant, cfg.depth, cfg.width
        self.phi_in = activation(cfg.activation) if cfg.input_activation else None
        self.blocks = Layers(lambda r: Block(cfg, rngs=r, partitioning=part), cfg.depth,
                             rngs=rngs, remat=cfg.remat, unroll=cfg.unroll, partitioning=part)
        input_init = KAIMING_NORMAL if cfg.torch_init else nnx.initializers.he_normal()
        self.input_proj = (dense(cfg, cfg.in_features, cfg.width, input_init, part=part,
                                 rngs=rngs, projection=True) if cfg.in_features else None)
        output_init = (torch_linear_init(cfg.width) if cfg.torch_init
                       else nnx.initializers.lecun_normal())
        self.output_proj = (dense(cfg, cfg.width, cfg.out_features, output_init, part=part,
                                  rngs=rngs, projection=True) if cfg.out_features else None)

    def stack_stages(self) -> tuple:
        return (self.blocks,)

    def embed(self, x):
        """x_0: the input projection (then φ, with `input_activation`), or x itself.

        The input layer reads data in its own dtype: a floating input of another precision
        is cast to the dtype of its weights first.
        """
        if self.input_proj is None:
            return x
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(self.input_proj.kernel.dtype)
        h = self.input_proj(x)
        return h if self.phi_in is None else self.phi_in(h)

    def head(self, x):
        return x if self.output_proj is None else self.output_proj(x)


def fc_blocks_as_data(module: "FullyConnected") -> dict:
    """The blocks of a `models.FullyConnected` as arrays with a leading depth axis: weights,
    biases, α (1 unless rezero), LayerNorm scale and bias (1 and 0 without a norm), and the
    variant's flags (`FC_VARIANT_FLAGS`) — the same pytree for every variant."""
    layers = module.blocks.layers
    kernel, bias = layers.linear.kernel[...], layers.linear.bias[...]
    depth, dtype = kernel.shape[0], kernel.dtype
    r, pre, post = FC_VARIANT_FLAGS[module.variant]
    norm = getattr(layers, "norm", None)
    return dict(kernel=kernel, bias=bias,
                alpha=layers.alpha[...] if module.variant == "rezero" else jnp.ones(depth, dtype),
                scale=jnp.ones_like(bias) if norm is None else norm.scale[...],
                norm_bias=jnp.zeros_like(bias) if norm is None else norm.bias[...],
                residual=jnp.full((depth,), r, dtype), pre=jnp.full((depth,), pre),
                post=jnp.full((depth,), post))


def fc_blocks_apply_fn(activation_name: str, eps: float = 1e-6):
    """`(data, x) -> y` of the blocks of a fully connected net from `fc_blocks_as_data`: one
    scan over the blocks, `eps` the LayerNorm's epsilon, each block `fc_block` (as `Block`'s)
    with the variant's flags as arrays, so that `isometry spectrum` compiles one program for
    all variants of one shape (a test holds it equal to the modules for every variant)."""
    phi = activation(activation_name)

    def layer_norm(h, p):  # flax's LayerNorm (fast variance), scale and bias per feature
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.maximum(jnp.mean(jnp.square(h), axis=-1, keepdims=True) - jnp.square(mean), 0)
        return (h - mean) * (jax.lax.rsqrt(var + eps) * p["scale"]) + p["norm_bias"]

    def block(h, p):
        return fc_block(h, lambda z: phi(z @ p["kernel"] + p["bias"]),
                        lambda z: layer_norm(z, p), (p["residual"], p["pre"], p["post"]),
                        p["alpha"]), None

    def apply(data, x):
        return jax.lax.scan(block, x, data)[0]

    return apply
