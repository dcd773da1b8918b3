"""The models the command line can build, by name: `--model fc|resnet|transformer`.

A `ModelKind` knows its variants, how to turn the parsed arguments into the model's frozen
configuration (`models.FullyConnectedConfig`, `ResNetConfig`, `TransformerConfig`) and how to
draw continuous probe inputs for its Jacobian. The arguments are read, never written: the
configuration is built from them field by field. The CLI is the application layer: it may
import `models`; the engine (`isometry/_*.py`) never does. The options themselves and their
checks are `isometry.cli._model_args`' (no jax there: argument errors answer before this
module is imported).
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
from isometry.cli import UsageError
from isometry.cli._model_args import add_model_args, check_model_args
from isometry.cli._names import ALPHA_VARIANTS
from models import fully_connected, resnet, transformer

__all__ = ["ModelKind", "MODEL_KINDS", "add_model_args", "build_model", "depths", "param_dtype",
           "resolve"]


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
      variants: the variant names it accepts (all of them are the default; the parsers
        read the same names from `isometry.cli._names`).
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


def _alpha_init(args, variant: str) -> float:
    """--alpha-init for the variants with α, 0 for the others: one --alpha-init serves a list
    of variants (`--variant plain,rezero --alpha-init 0.1`), and a model refuses an α it would
    ignore."""
    return args.alpha_init if variant in ALPHA_VARIANTS[args.model] else 0.0


def _fc_config(args, variant: str, depth: int, task) -> models.FullyConnectedConfig:
    # training: project flat inputs in, logits out
    return models.FullyConnectedConfig(
        depth, args.width, variant=variant, activation=args.activation,
        alpha_init=_alpha_init(args, variant), param_dtype=param_dtype(args),
        in_features=math.prod(task.input_shape) if task else None,
        out_features=task.num_classes if task else None, remat=args.remat)


def _resnet_config(args, variant: str, depth: int, task) -> models.ResNetConfig:
    # training: channels and classes of the data
    return models.ResNetConfig(
        depth, variant=variant, stages=args.blocks, width=args.channels,
        alpha_init=_alpha_init(args, variant), in_channels=task.input_shape[-1] if task else 3,
        num_classes=task.num_classes if task else 10, param_dtype=param_dtype(args),
        remat=args.remat)


def _transformer_config(args, variant: str, depth: int, task) -> models.TransformerConfig:
    # training: a causal language model over the vocabulary
    return models.TransformerConfig(
        depth, args.d_model, heads=args.heads, ffn=args.ffn, variant=variant,
        activation=args.activation, alpha_init=_alpha_init(args, variant),
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


def resolve(args) -> tuple[ModelKind, list[str]]:
    """The ModelKind and the checked list of variants the arguments ask for
    (`_model_args.check_model_args`: every model option is checked).

    Only checks: the depths and the dtype the arguments ask for are `depths(args)` and
    `param_dtype(args)`.
    """
    return MODEL_KINDS[args.model], check_model_args(args)
