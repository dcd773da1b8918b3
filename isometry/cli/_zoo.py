"""The models the command line can build, by name: `--model fc|resnet|transformer`.

A `ModelKind` knows its variants, how to turn the parsed arguments into the model's frozen
configuration (`models.FullyConnectedConfig`, `ResNetConfig`, `TransformerConfig`) and how to
draw continuous probe inputs for its Jacobian. The arguments are read, never written: the
configuration is built from them field by field. The CLI is the application layer: it may
import `models`; the engine (`isometry/_*.py`) never does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

import models
from isometry.cli import UsageError, comma_list
from models import fully_connected, resnet, transformer


def param_dtype(args) -> Any:
    """The parameters' dtype the arguments ask for: float64 with --x64, else float32."""
    return jnp.float64 if getattr(args, "x64", False) else jnp.float32


def depths(args) -> list[int]:
    """The depths the arguments ask for: --depth, or 2·sum + 2 of a ResNet's --blocks."""
    blocks = getattr(args, "blocks", None)
    return [2 * sum(blocks) + 2] if blocks else list(args.depth)


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How the CLI builds one kind of model.

    Attributes:
      name: the `--model` name.
      variants: the variant names it accepts (all of them are the default).
      model: the model class (built with `model.from_config`).
      configure: (args, variant, depth, task) -> the model's configuration. `task` is the
        `isometry.data.Task` (kind, input_shape, num_classes) `isometry train` trains on, to
        size the model's inputs and outputs for it; None: as for spectra.
      input_shape: args -> the shape of one probe input (without batch axis).
      tasks: the `Task.kind`s it trains on ("classification", "language_model").
      flat_inputs: training flattens each example to a vector (fully connected nets).
    """

    name: str
    variants: tuple[str, ...]
    model: type
    configure: Callable[[argparse.Namespace, str, int, Any], Any]
    input_shape: Callable[[argparse.Namespace], tuple[int, ...]]
    tasks: tuple[str, ...] = ()
    flat_inputs: bool = False

    def config(self, args, variant: str, depth: int, task=None, **overrides):
        """The model's configuration for these arguments, `overrides` replacing fields.

        Raises:
          UsageError: the settings do not make a model (the model's own message).
        """
        try:
            return dataclasses.replace(self.configure(args, variant, depth, task), **overrides)
        except ValueError as err:
            raise UsageError(str(err)) from None

    def build(self, args, variant: str, depth: int, rngs: nnx.Rngs, task=None,
              **overrides) -> nnx.Module:
        """The model of `config(args, variant, depth, task, **overrides)`."""
        return self.model.from_config(self.config(args, variant, depth, task, **overrides),
                                      rngs=rngs)

    def train_input_shape(self, task) -> tuple[int, ...] | None:
        """The shape training reshapes each example to (None: as the data gives it)."""
        return (math.prod(task.input_shape),) if self.flat_inputs else None

    def probe_inputs(self, args, key, n: int, dtype) -> jax.Array:
        """n Gaussian N(0, 1) inputs, shape (n, *input_shape): drawn in float32 and cast to
        `dtype`, so the same key gives the same inputs with and without --x64."""
        return jax.random.normal(key, (n, *self.input_shape(args)), dtype=jnp.float32).astype(dtype)


def build_model(kind: ModelKind, args, variant: str, depth: int, seed: int,
                task=None) -> nnx.Module:
    """`kind.build` initialized in float32, then cast to the dtype of the arguments.

    The same `--seed` so gives the same weights with and without `--x64` (rounded to float32
    once), and the float64 run is the float32 run computed in higher precision: the two can be
    compared number by number.
    """
    module = kind.build(args, variant, depth, nnx.Rngs(seed), task, param_dtype=jnp.float32)
    dtype = param_dtype(args)
    if jnp.dtype(dtype) != jnp.float32:
        state = nnx.state(module)
        nnx.update(module, jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
    return module


def _fc_config(args, variant: str, depth: int, task) -> models.FullyConnectedConfig:
    # training: project flat inputs in, logits out
    return models.FullyConnectedConfig(
        depth, args.width, variant=variant, activation=args.activation,
        alpha_init=args.alpha_init, param_dtype=param_dtype(args),
        in_features=math.prod(task.input_shape) if task else None,
        out_features=task.num_classes if task else None, remat=args.remat)


def _resnet_config(args, variant: str, depth: int, task) -> models.ResNetConfig:
    # training: channels and classes of the data
    return models.ResNetConfig(
        depth, variant=variant, stages=args.blocks, width=args.channels,
        alpha_init=args.alpha_init, in_channels=task.input_shape[-1] if task else 3,
        num_classes=task.num_classes if task else 10, param_dtype=param_dtype(args),
        remat=args.remat)


def _transformer_config(args, variant: str, depth: int, task) -> models.TransformerConfig:
    # training: a causal language model over the vocabulary
    return models.TransformerConfig(
        depth, args.d_model, heads=args.heads, ffn=args.ffn, variant=variant,
        activation=args.activation, alpha_init=args.alpha_init,
        vocab_size=task.num_classes if task else None, causal=task is not None,
        param_dtype=param_dtype(args), remat=args.remat)


MODEL_KINDS: dict[str, ModelKind] = {
    "fc": ModelKind("fc", fully_connected.VARIANTS, models.FullyConnected, _fc_config,
                    lambda a: (a.width,), tasks=("classification",), flat_inputs=True),
    # spectra: logits (10) w.r.t. the image, J is 10 × (size·size·3)
    "resnet": ModelKind("resnet", resnet.VARIANTS, models.ResNet, _resnet_config,
                        lambda a: (a.image_size, a.image_size, 3), tasks=("classification",)),
    # spectra: the encoder stack on continuous inputs (seq, d_model), J is (T·d) × (T·d)
    "transformer": ModelKind("transformer", transformer.VARIANTS, models.Transformer,
                             _transformer_config, lambda a: (a.seq_len, a.d_model),
                             tasks=("language_model",)),
}


def add_model_args(parser: argparse.ArgumentParser, depth_default: str = "32") -> None:
    """Options every command that builds models shares."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="fc", choices=sorted(MODEL_KINDS),
                   help="architecture (default: fc)")
    g.add_argument("--variant", type=comma_list(str), default=None,
                   help="comma list of variants (default: every variant of the model)")
    g.add_argument("--depth", type=comma_list(int), default=comma_list(int)(depth_default),
                   help=f"comma list of depths (default: {depth_default})")
    g.add_argument("--width", type=int, default=256, help="width of FC nets (default: 256)")
    g.add_argument("--alpha-init", type=float, default=0.0,
                   help="initial alpha of ReZero residual weights (default: 0)")
    g.add_argument("--activation", default="relu", choices=sorted(models.ACTIVATIONS),
                   help="activation of FC nets and Transformer feed-forwards (default: relu)")
    g.add_argument("--blocks", type=comma_list(int), default=None,
                   help="ResNet blocks per stage, e.g. 2,2,2,2 (overrides --depth: depth = "
                        "2*sum+2; default: the layout of --depth, 6n+2 or 18/34)")
    g.add_argument("--channels", type=int, default=None,
                   help="ResNet channels of the first stage (default: 16 for 6n+2, 64 for 18/34)")
    g.add_argument("--image-size", type=int, default=32,
                   help="ResNet probe image height and width for spectra (default: 32)")
    g.add_argument("--seq-len", type=int, default=128,
                   help="Transformer sequence length (default: 4 for spectra, 128 for training)")
    g.add_argument("--d-model", type=int, default=16,
                   help="Transformer width d_model (default: 16)")
    g.add_argument("--heads", type=int, default=4, help="Transformer attention heads (default: 4)")
    g.add_argument("--ffn", type=int, default=64,
                   help="Transformer feed-forward hidden width (default: 64)")
    g.add_argument("--remat", action="store_true",
                   help="recompute each layer on the backward pass and in matrix-free Jacobian "
                        "products instead of storing its activations (memory for very deep "
                        "stacks, at about one more forward pass)")


def resolve(args) -> tuple[ModelKind, list[str]]:
    """The ModelKind and the checked list of variants the arguments ask for.

    Only checks: the depths and the dtype the arguments ask for are `depths(args)` and
    `param_dtype(args)`.
    """
    kind = MODEL_KINDS[args.model]
    variants = args.variant or list(kind.variants)
    unknown = [v for v in variants if v not in kind.variants]
    if unknown:
        raise UsageError(f"unknown {args.model} variant(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(kind.variants)}")
    if not args.depth:
        raise UsageError("--depth needs at least one depth, e.g. --depth 32 or --depth 8,32")
    if any(d < 1 for d in args.depth):
        raise UsageError(f"depths must be positive, got {args.depth}")
    if args.width < 1:
        raise UsageError(f"--width must be positive, got {args.width}")
    for name in ("channels", "image_size", "seq_len", "d_model", "heads", "ffn"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.blocks is not None:
        if args.model != "resnet":
            raise UsageError("--blocks sets the stages of a ResNet; use it with --model resnet")
        if not args.blocks or min(args.blocks) < 1:
            raise UsageError(f"--blocks must be positive block counts, got {args.blocks}")
    return kind, variants
