"""Convolutional ResNets for CIFAR-shaped images (NHWC, 32×32×3) in the variants of the paper's §5.2.

A ResNet is a stem (3×3 convolution), stages of basic blocks (two 3×3 convolutions; the first
block of a stage halves the resolution and doubles the channels), global average pooling and a
linear classifier. With the branch F(x) = BN(conv(φ(BN(conv(x))))) and the shortcut S (the
identity, or a strided/zero-padded or 1×1-projected identity where the shape changes), one
block maps x_i to x_{i+1} by

    residual     x_{i+1} = φ(S(x_i) + F(x_i))                         He et al. 2016a
    prenorm      x_{i+1} = S(x_i) + conv(φ(BN(conv(φ(BN(x_i))))))     pre-activation, He et al. 2016b
    prenorm_rezero  x_{i+1} = S(x_i) + α_i·conv(φ(BN(conv(φ(BN(x_i))))))  pre-activation + ReZero
    gated        x_{i+1} = (1 − α_i)·S(x_i) + α_i·φ(F(x_i))           Gated ResNet (Savarese et al. 2016)
    zero_gamma   residual with the scale γ of the branch's last BatchNorm initialized to 0
    fixup        x_{i+1} = φ(S'(x_i) + s·conv(φ(conv(x_i + a) + b) + c) + d), no BatchNorm, with
                 S'(x) = x where the shape is kept and S(x + a) where it changes (the identity
                 path carries x itself, as in the FixUp code); scalar biases a, b, c, d = 0 and
                 multiplier s = 1, the first convolution
                 scaled by L^{-1/2}, the last one and the classifier zero-initialized (Zhang et al. 2019)
    rezero       x_{i+1} = S(x_i) + α_i·φ(F(x_i)),   α_i = alpha_init (0 by default)

φ is ReLU. ReZero's block is the authors' `out = α·relu(bn2(conv2(·))) + shortcut`; it keeps
BatchNorm (`batchnorm=False` drops it, as `gated` and `residual` may). At α = 0 (and for
FixUp on the non-negative stream its stem produces) every block that keeps the shape is the
identity, so a single-stage residual stack starts as the identity function.

Depths: 6n + 2 gives the CIFAR ResNets of He et al. (ResNet-20, -56, -110: three stages of n
blocks, 16/32/64 channels, parameter-free shortcuts); 18 and 34 give the ImageNet layouts with a
CIFAR stem (four stages, 64…512 channels, 1×1 projection shortcuts), so
`ResNet(18, variant="prenorm")` is PreAct-ResNet-18, `variant="prenorm_rezero"` the same
pre-activation net with ReZero's α on every branch (the paper's "Pre-activation ResNet-18 +
ReZero"), and `variant="rezero"` the post-activation ReZero ResNet-18.

BatchNorm runs in train mode after construction (batch statistics); `model.eval()` switches
to the running averages, which is how Jacobians are taken.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models._stack import (BatchNorm, Identity, Layers, Stack, check_alpha_init, check_variant,
                           remat_policy)

VARIANTS = ("residual", "prenorm", "gated", "zero_gamma", "fixup", "rezero", "prenorm_rezero")
#: Pre-activation variants: BatchNorm and φ at the start of each block and once before the head.
PREACT_VARIANTS = ("prenorm", "prenorm_rezero")
SHORTCUTS = ("identity", "projection")
#: Blocks per stage of the ImageNet-style basic-block ResNets, by depth.
BASIC_LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
#: Variants whose blocks carry a residual weight α.
ALPHA_VARIANTS = ("gated", "rezero", "prenorm_rezero")

relu = jax.nn.relu
#: He (Kaiming) normal initialization, untruncated as PyTorch's `kaiming_normal_`.
HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def layout(depth: int) -> tuple[tuple[int, ...], int, str]:
    """(blocks per stage, channels of the first stage, shortcut) of the ResNet of this depth.

    Raises:
      ValueError: for a depth that is neither 6n + 2 nor one of `BASIC_LAYOUTS`.
    """
    if depth in BASIC_LAYOUTS:
        return BASIC_LAYOUTS[depth], 64, "projection"
    if depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
        return (n, n, n), 16, "identity"
    raise ValueError(f"ResNet depth {depth} is not 6n+2 (8, 20, 32, 56, 110, …) nor one of "
                     f"{sorted(BASIC_LAYOUTS)}; pick such a depth or pass stages=(n1, n2, …)")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Every setting of a `ResNet` (the model's keyword arguments, one place).

    Attributes:
      depth: 6n + 2 (ResNet-20, -56, -110: three stages of n blocks, 16 channels first,
        parameter-free shortcuts) or 18 / 34 (four stages, 64 channels first, projection
        shortcuts: PreAct-ResNet-18 with variant="prenorm"). Ignored when `stages` is given.
      variant: "residual", "prenorm", "gated", "zero_gamma", "fixup", "rezero" or
        "prenorm_rezero".
      stages: blocks per stage, overriding the depth's layout (the depth is then
        2·sum(stages) + 2); stage s has width·2^s channels and, after the first, stride 2.
      width: channels of the first stage (default: 16 for 6n + 2 layouts, 64 otherwise).
      shortcut: "identity" (option A: subsample and zero-pad where the shape changes) or
        "projection" (1×1 convolution, with BatchNorm when the variant has it); default by depth.
      batchnorm: keep BatchNorm (default True; FixUp never has it, zero-γ always does).
      alpha_init: initial α of `rezero` and `gated` blocks (0: every shape-keeping block is
        the identity).
      num_classes: outputs of the classifier (10 for CIFAR-10).
      in_channels: channels of the input images (3).
      param_dtype: parameter dtype (float64 needs `jax_enable_x64`).
      remat: rematerialize each block of the scanned stacks on the backward pass (True, or a
        name from `jax.checkpoint_policies`).
      unroll: blocks per scan iteration.

    None means "the default of the layout"; `resolved()` spells every one out.

    Example:
      >>> r = ResNetConfig(56, variant="fixup").resolved()
      >>> r.stages, r.width, r.shortcut, r.batchnorm
      ((9, 9, 9), 16, 'identity', False)
    """

    depth: int = 20
    variant: str = "rezero"
    stages: tuple[int, ...] | None = None
    width: int | None = None
    shortcut: str | None = None
    batchnorm: bool | None = None
    alpha_init: float = 0.0
    num_classes: int = 10
    in_channels: int = 3
    param_dtype: Any = jnp.float32
    remat: bool | str = False
    unroll: int = 1

    def __post_init__(self):
        check_variant("ResNet", self.variant, VARIANTS)
        check_alpha_init("ResNet", self.variant, self.alpha_init, ALPHA_VARIANTS)
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(int(n) for n in self.stages))
            if not self.stages or min(self.stages) < 1:
                raise ValueError(f"stages must be positive block counts, got {self.stages}")
        r = self._defaults()
        check_variant("ResNet shortcut", r["shortcut"], SHORTCUTS)
        if r["batchnorm"] and self.variant == "fixup":
            raise ValueError("FixUp replaces BatchNorm: use batchnorm=False (the default) with "
                             "variant='fixup'")
        if not r["batchnorm"] and self.variant == "zero_gamma":
            raise ValueError("zero_gamma initializes a BatchNorm scale to 0 and needs "
                             "batchnorm=True")
        if r["width"] < 1 or self.num_classes < 1 or self.in_channels < 1:
            raise ValueError(f"width, num_classes and in_channels must be positive, got "
                             f"{r['width']}, {self.num_classes}, {self.in_channels}")
        remat_policy(self.remat)

    def _defaults(self) -> dict:
        if self.stages is None:
            stages, width, shortcut = layout(self.depth)
        else:
            stages, width, shortcut = self.stages, 16, "identity"
        return dict(stages=stages, depth=2 * sum(stages) + 2,
                    width=width if self.width is None else int(self.width),
                    shortcut=shortcut if self.shortcut is None else self.shortcut,
                    batchnorm=self.variant != "fixup" if self.batchnorm is None else self.batchnorm)

    def resolved(self) -> ResNetConfig:
        """The same net with every default spelled out (stages, width, shortcut, batchnorm)."""
        return dataclasses.replace(self, **self._defaults())

    @property
    def num_blocks(self) -> int:
        """Residual blocks in all (FixUp scales its first convolutions by num_blocks^{-1/2})."""
        return sum(self.resolved().stages)


def _conv(cin: int, cout: int, size: int, stride: int, *, bias: bool, kernel_init, param_dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
    pad = (size - 1) // 2
    return nnx.Conv(cin, cout, (size, size), strides=(stride, stride), padding=((pad, pad),) * 2,
                    use_bias=bias, kernel_init=kernel_init, param_dtype=param_dtype, rngs=rngs)


def _batchnorm(features: int, enabled: bool, *, zero_scale: bool = False, param_dtype,
               rngs: nnx.Rngs) -> nnx.Module:
    if not enabled:
        return Identity()
    scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    bn = BatchNorm(features, momentum=0.9, epsilon=1e-5, scale_init=scale_init,
                       param_dtype=param_dtype, rngs=rngs)
    # flax keeps running statistics in float32; keep them in the parameters' dtype
    bn.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype))
    bn.var = nnx.BatchStat(jnp.ones((features,), param_dtype))
    return bn


def _scalar(value: float, param_dtype) -> nnx.Param:
    return nnx.Param(jnp.asarray(value, dtype=param_dtype))


class Shortcut(nnx.Module):
    """S(x): the identity, or where the block changes the shape either the parameter-free
    option A of He et al. (every other pixel, channels zero-padded) or a 1×1 convolution."""

    def __init__(self, cin: int, cout: int, stride: int, *, kind: str, batchnorm: bool,
                 param_dtype, rngs: nnx.Rngs):
        self.stride = stride
        self.pad = cout - cin
        self.changes_shape = stride != 1 or cin != cout
        projects = self.changes_shape and kind == "projection"
        self.projection = (_conv(cin, cout, 1, stride, bias=False,
                                 kernel_init=HE_NORMAL,
                                 param_dtype=param_dtype, rngs=rngs) if projects else None)
        self.norm = _batchnorm(cout, batchnorm and projects, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        if not self.changes_shape:
            return x
        if self.projection is not None:
            return self.norm(self.projection(x))
        x = x[..., ::self.stride, ::self.stride, :]
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.pad)])


class BasicBlock(nnx.Module):
    """One residual block x_i ↦ x_{i+1} of a ResNet (see the module docstring).

    Args:
      cin, cout: input and output channels.
      stride: 2 where the block halves the resolution, else 1.
      config: the net's configuration, resolved (`ResNetConfig.resolved`).
      rngs: `nnx.Rngs` for initialization.
    """

    def __init__(self, cin: int, cout: int, stride: int, config: ResNetConfig, *,
                 rngs: nnx.Rngs):
        variant, batchnorm, dtype = config.variant, config.batchnorm, config.param_dtype
        self.variant = variant
        conv1_init = conv2_init = HE_NORMAL
        if variant == "fixup":
            conv1_init = nnx.initializers.variance_scaling(2.0 / config.num_blocks, "fan_out",
                                                           "normal")
            conv2_init = nnx.initializers.zeros_init()
        bias = not batchnorm and variant != "fixup"
        # the pre-activation block normalizes its input (cin features) before the first conv
        bn1_features = cin if variant in PREACT_VARIANTS else cout
        self.conv1 = _conv(cin, cout, 3, stride, bias=bias, kernel_init=conv1_init,
                           param_dtype=dtype, rngs=rngs)
        self.bn1 = _batchnorm(bn1_features, batchnorm, param_dtype=dtype, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, 1, bias=bias, kernel_init=conv2_init,
                           param_dtype=dtype, rngs=rngs)
        self.bn2 = _batchnorm(cout, batchnorm, zero_scale=variant == "zero_gamma",
                              param_dtype=dtype, rngs=rngs)
        self.shortcut = Shortcut(cin, cout, stride, kind=config.shortcut,
                                 batchnorm=batchnorm and variant not in PREACT_VARIANTS,
                                 param_dtype=dtype, rngs=rngs)
        if variant in ALPHA_VARIANTS:
            self.alpha = _scalar(config.alpha_init, dtype)
        if variant == "fixup":
            self.bias1a, self.bias1b = _scalar(0.0, dtype), _scalar(0.0, dtype)
            self.bias2a, self.bias2b = _scalar(0.0, dtype), _scalar(0.0, dtype)
            self.scale = _scalar(1.0, dtype)

    def branch(self, x):
        """F(x) = BN(conv(φ(BN(conv(x))))) (FixUp: s·conv(φ(conv(x) + b) + c) + d)."""
        if self.variant == "fixup":
            h = relu(self.conv1(x) + self.bias1b)
            return self.scale * self.conv2(h + self.bias2a) + self.bias2b
        return self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))

    def preact_branch(self, h):
        """conv(φ(BN(conv(h)))) on the pre-activated input h = φ(BN(x))."""
        return self.conv2(relu(self.bn2(self.conv1(h))))

    def __call__(self, x):
        S, F = self.shortcut, self.branch
        match self.variant:
            case "residual" | "zero_gamma":
                return relu(S(x) + F(x))
            case "prenorm" | "prenorm_rezero":
                h = relu(self.bn1(x))
                gate = self.alpha if self.variant == "prenorm_rezero" else 1.0
                return S(h if S.projection is not None else x) + gate * self.preact_branch(h)
            case "gated":
                return (1 - self.alpha) * S(x) + self.alpha * relu(F(x))
            case "fixup":
                xa = x + self.bias1a
                return relu((S(xa) if S.changes_shape else x) + F(xa))
            case "rezero":
                return S(x) + self.alpha * relu(F(x))


class ResNet(Stack):
    """A basic-block ResNet for NHWC images: stem → residual blocks → pooled classifier.

    Args:
      depth: 6n + 2 (ResNet-20, -56, -110) or 18 / 34; ignored when `stages` is given.
      rngs: `nnx.Rngs` for initialization.
      **options: the other fields of `ResNetConfig` (variant, stages, width, shortcut,
        batchnorm, alpha_init, num_classes, in_channels, param_dtype, remat, unroll), with
        its defaults. `ResNet.from_config(config, rngs=...)` builds from a config;
        `net.config` is the config the net was built from.

    `net.blocks` holds, per stage, its first block (which may change the shape) and a
    `Layers` stack of the other n − 1 blocks (parameters stacked, one scan).

    Example:
      >>> net = ResNet(variant="rezero", stages=(1,), width=4, rngs=nnx.Rngs(0))
      >>> net.eval()
      >>> net(jnp.ones((2, 8, 8, 3))).shape, net.depth
      ((2, 10), 4)
      >>> ResNetConfig(110).resolved().stages   # ResNet-110: three stages of 18 blocks
      (18, 18, 18)

    Paper: ReZero, §5.2 and Table 2 (Bachlechner et al. 2020).
    """

    def __init__(self, depth: int = 20, *, rngs: nnx.Rngs, **options):
        config = ResNetConfig(depth, **options)
        cfg = config.resolved()
        self.config = config
        variant, batchnorm, dtype = cfg.variant, cfg.batchnorm, cfg.param_dtype
        self.variant, self.stages, self.depth = variant, cfg.stages, cfg.depth
        self.batchnorm = batchnorm
        self.stem = _conv(cfg.in_channels, cfg.width, 3, 1,
                          bias=not batchnorm and variant != "fixup", kernel_init=HE_NORMAL,
                          param_dtype=dtype, rngs=rngs)
        # pre-activation nets normalize at the start of each block and once before the head
        self.stem_norm = _batchnorm(cfg.width, batchnorm and variant not in PREACT_VARIANTS,
                                    param_dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(self._stages(cfg, rngs))
        cin = cfg.width * 2 ** (len(cfg.stages) - 1)
        self.final_norm = _batchnorm(cin, batchnorm and variant in PREACT_VARIANTS,
                                     param_dtype=dtype, rngs=rngs)
        zero = nnx.initializers.zeros_init()
        self.classifier = nnx.Linear(cin, cfg.num_classes, param_dtype=dtype, rngs=rngs,
                                     **(dict(kernel_init=zero) if variant == "fixup" else {}))
        if variant == "fixup":
            self.stem_bias = _scalar(0.0, dtype)
            self.head_bias = _scalar(0.0, dtype)
        self.in_channels = cfg.in_channels

    @staticmethod
    def _stages(cfg: ResNetConfig, rngs: nnx.Rngs) -> list:
        """Per stage: its first block (strided and widened after stage 0), then one scanned
        `Layers` stack of the n − 1 blocks that keep the shape."""
        parts, cin = [], cfg.width
        for s, n in enumerate(cfg.stages):
            cout = cfg.width * 2**s
            parts.append(BasicBlock(cin, cout, 2 if s > 0 else 1, cfg, rngs=rngs))
            if n > 1:
                parts.append(Layers(lambda r, c=cout: BasicBlock(c, c, 1, cfg, rngs=r), n - 1,
                                    rngs=rngs, remat=cfg.remat, unroll=cfg.unroll))
            cin = cout
        return parts

    def stack_stages(self) -> tuple:
        return tuple(self.blocks)

    def embed(self, x):
        """x_0 = φ(BN(conv(image))) (pre-activation: conv(image); FixUp: φ(conv(image) + b))."""
        if x.ndim < 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"ResNet expects NHWC images (…, height, width, {self.in_channels}), "
                             f"got shape {x.shape}")
        h = self.stem(x)
        if self.variant in PREACT_VARIANTS:
            return h
        if self.variant == "fixup":
            return relu(h + self.stem_bias)
        return relu(self.stem_norm(h))

    def head(self, x):
        """Logits: linear(mean over height and width) (pre-activation: of φ(BN(x_L)))."""
        if self.variant in PREACT_VARIANTS:
            x = relu(self.final_norm(x))
        pooled = jnp.mean(x, axis=(-3, -2))
        if self.variant == "fixup":
            pooled = pooled + self.head_bias
        return self.classifier(pooled)

