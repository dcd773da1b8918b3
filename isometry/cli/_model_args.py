"""The model options of `spectrum`, `train` and `diagnose`, and their checks, without jax.

`add_model_args` adds them to a parser; `check_model_args` checks the parsed values (names,
ranges, which variants take --alpha-init) and returns the variants to build. Both read only
`isometry.cli._names`: an argument error answers before jax, flax or the models are
imported. Building the models is `isometry.cli._zoo`'s.
"""

from __future__ import annotations

import argparse

from isometry.cli import UsageError, comma_list
from isometry.cli._names import ACTIVATIONS, ALPHA_VARIANTS, MODEL_VARIANTS, default_variant

__all__ = ["add_model_args", "check_model_args", "given", "StoreGiven"]

#: The Namespace attribute holding the destinations of the options typed on the command line
#: (for the options added with `StoreGiven`).
GIVEN = "given_options"


class StoreGiven(argparse.Action):
    """`store`, and remember that the option was typed (`given(args, dest)`): for options
    whose default is a valid value but whose presence is an error in some settings."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, (*getattr(namespace, GIVEN, ()), self.dest))


def given(args, dest: str) -> bool:
    """Whether the option of `dest` (added with `action=StoreGiven`) was on the command line."""
    return dest in getattr(args, GIVEN, ())


def add_model_args(parser: argparse.ArgumentParser, depth_default: str = "32",
                   one_model: bool = False) -> None:
    """Options every command that builds models shares.

    Args:
      parser: the command's parser.
      depth_default: the default of --depth.
      one_model: the command builds one model (`train`, `diagnose`): --variant and --depth
        take one value, --variant defaults to `_names.default_variant`.
    """
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="fc", choices=sorted(MODEL_VARIANTS),
                   help="architecture (default: fc)")
    if one_model:
        g.add_argument("--variant", type=comma_list(str), default=None,
                       help="the variant to build (default: rezero, which every model has)")
        g.add_argument("--depth", type=comma_list(int), default=comma_list(int)(depth_default),
                       help=f"the depth (default: {depth_default})")
    else:
        g.add_argument("--variant", type=comma_list(str), default=None,
                       help="comma list of variants (default: every variant of the model)")
        g.add_argument("--depth", type=comma_list(int), default=comma_list(int)(depth_default),
                       help=f"comma list of depths (default: {depth_default})")
    g.add_argument("--width", type=int, default=256, help="width of FC nets (default: 256)")
    g.add_argument("--alpha-init", type=float, default=0.0, action=StoreGiven,
                   help="initial alpha of the residual weights of the variants that have them: "
                        "rezero (and a ResNet's gated, prenorm_rezero) (default: 0)")
    g.add_argument("--activation", default="relu", choices=ACTIVATIONS,
                   help="activation of FC nets and Transformer feed-forwards (default: relu)")
    g.add_argument("--blocks", type=comma_list(int), default=None,
                   help="ResNet blocks per stage, e.g. 2,2,2,2 (overrides --depth: depth = "
                        "2*sum+2; default: the layout of --depth, 6n+2 or 18/34)")
    g.add_argument("--channels", type=int, default=None,
                   help="ResNet channels of the first stage (default: 16 for 6n+2, 64 for 18/34)")
    g.add_argument("--image-size", type=int, default=32, action=StoreGiven,
                   help="ResNet probe image height and width for spectra (default: 32; training "
                        "takes the size of --data)")
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


def _command(args) -> str:
    return getattr(args, "command", None) or "this command"


def _variants(args, one_model: bool) -> list[str]:
    """The checked variants of --variant (its default: every variant, or the one default)."""
    valid = MODEL_VARIANTS[args.model]
    if args.variant is None:
        return [default_variant(args.model)] if one_model else list(valid)
    if not args.variant:
        raise UsageError(f"--variant is empty; give one of the {args.model} variants: "
                         f"{', '.join(valid)}")
    unknown = [v for v in args.variant if v not in valid]
    if unknown:
        raise UsageError(f"unknown {args.model} variant(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(valid)}")
    if one_model and len(args.variant) != 1:
        raise UsageError(f"{_command(args)} builds one model: give one --variant, got "
                         f"{','.join(args.variant)}")
    return list(args.variant)


def _check_alpha(args, variants: list[str]) -> None:
    with_alpha = ALPHA_VARIANTS[args.model]
    if given(args, "alpha_init") and not any(v in with_alpha for v in variants):
        raise UsageError(f"--alpha-init: {args.model} {', '.join(variants)} "
                         f"{'has' if len(variants) == 1 else 'have'} no residual weights alpha "
                         f"to set; the {args.model} variants with alpha: {', '.join(with_alpha)}")


def check_model_args(args, one_model: bool = False) -> list[str]:
    """The variants the arguments ask for, after checking every model option's value.

    Raises:
      UsageError: naming the option and what it takes.
    """
    variants = _variants(args, one_model)
    _check_alpha(args, variants)
    depths = args.depth
    if not depths:
        raise UsageError("--depth needs at least one depth, e.g. --depth 32"
                         + ("" if one_model else " or --depth 8,32"))
    if any(d < 1 for d in depths):
        raise UsageError(f"depths must be positive, got {depths}")
    if one_model and len(depths) != 1 and args.blocks is None:
        raise UsageError(f"{_command(args)} builds one model: give one --depth, got "
                         f"{','.join(map(str, depths))}")
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
    return variants
