"""The models the command line can build, by name: `--model fc|resnet|transformer`.

A `ModelKind` knows its variants, how to build one model from the parsed arguments and how
to draw continuous probe inputs for its Jacobian. The CLI is the application layer: it may
import `models`; the engine (`isometry/_*.py`) never does.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import models
from models import fully_connected


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How the CLI builds one kind of model.

    Attributes:
      name: the `--model` name.
      variants: the variant names it accepts (all of them are the default).
      build: (args, variant, depth, rngs) -> nnx.Module.
      input_shape: args -> the shape of one probe input (without batch axis).
    """

    name: str
    variants: tuple[str, ...]
    build: Callable[[argparse.Namespace, str, int, nnx.Rngs], nnx.Module]
    input_shape: Callable[[argparse.Namespace], tuple[int, ...]]

    def probe_inputs(self, args, key, n: int, dtype) -> jax.Array:
        """n Gaussian N(0, 1) inputs, shape (n, *input_shape)."""
        return jax.random.normal(key, (n, *self.input_shape(args)), dtype=dtype)


def _build_fc(args, variant: str, depth: int, rngs: nnx.Rngs) -> nnx.Module:
    return models.FullyConnected(depth, args.width, variant=variant, activation=args.activation,
                                 alpha_init=args.alpha_init, param_dtype=args.param_dtype,
                                 rngs=rngs)


MODEL_KINDS: dict[str, ModelKind] = {
    "fc": ModelKind("fc", fully_connected.VARIANTS, _build_fc, lambda a: (a.width,)),
}


def add_model_args(parser: argparse.ArgumentParser, depth_default: str = "32") -> None:
    """Options every command that builds models shares."""
    from isometry.cli import comma_list

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
                   help="activation of FC nets (default: relu)")


def resolve(args) -> tuple[ModelKind, list[str]]:
    """The ModelKind and the checked list of variants the arguments ask for."""
    from isometry.cli import UsageError

    kind = MODEL_KINDS[args.model]
    variants = args.variant or list(kind.variants)
    unknown = [v for v in variants if v not in kind.variants]
    if unknown:
        raise UsageError(f"unknown {args.model} variant(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(kind.variants)}")
    if any(d < 1 for d in args.depth):
        raise UsageError(f"depths must be positive, got {args.depth}")
    if args.width < 1:
        raise UsageError(f"--width must be positive, got {args.width}")
    args.param_dtype = jnp.float64 if getattr(args, "x64", False) else jnp.float32
    return kind, variants
