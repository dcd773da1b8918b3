"""The names and defaults the command line offers, without importing what defines them.

Parsing the arguments of any command (and every argument error) must answer without loading
jax, flax, scipy or matplotlib. The packages that define these names import them
at their top (`models`, `isometry.train`, `isometry.theory`, `isometry.experiments`), so the
parsers read this copy instead; `tests/test_cli_errors.py` checks that it equals the
library's tables, so a name added there and forgotten here fails a test, not a user.
"""

from __future__ import annotations

__all__ = ["MODEL_VARIANTS", "ALPHA_VARIANTS", "ACTIVATIONS", "WEIGHTS", "OPTIMIZERS",
           "ADAGRAD_STYLES", "SCHEDULES", "EXPERIMENTS", "SCALES", "SWEEPABLE", "FIG2_DEFAULTS",
           "SWEEP_DEFAULTS", "MAX_SIMULATED_DEVICES", "default_variant"]

#: `--model` → its variants (`models.fully_connected.VARIANTS`, `resnet.VARIANTS`,
#: `transformer.VARIANTS`), in the models' order.
MODEL_VARIANTS: dict[str, tuple[str, ...]] = {
    "fc": ("plain", "residual", "norm", "prenorm", "postnorm", "rezero"),
    "resnet": ("residual", "prenorm", "gated", "zero_gamma", "fixup", "rezero", "prenorm_rezero"),
    "transformer": ("postnorm", "prenorm", "gpt2norm", "rezero"),
}

#: `--model` → the variants with residual weights α, the ones `--alpha-init` sets
#: (`models.resnet.ALPHA_VARIANTS`; fc and transformer nets: only "rezero").
ALPHA_VARIANTS: dict[str, tuple[str, ...]] = {
    "fc": ("rezero",),
    "resnet": ("gated", "rezero", "prenorm_rezero"),
    "transformer": ("rezero",),
}

#: Activation names (`models.ACTIVATIONS`, the same table as `isometry.theory.ACTIVATIONS`).
ACTIVATIONS = ("gelu", "hardtanh", "linear", "relu", "tanh")
#: Weight distributions of `isometry theory` (`isometry.theory.WEIGHTS`).
WEIGHTS = ("gaussian", "orthogonal")

#: `isometry.train.OPTIMIZERS`, `ADAGRAD_STYLES`, `SCHEDULES`.
OPTIMIZERS = ("adagrad", "sgd", "adam", "adamw")
ADAGRAD_STYLES = ("pytorch", "optax")
SCHEDULES = ("constant", "step", "onecycle", "cosine")

#: `isometry.experiments.EXPERIMENTS` (names), `SCALES` and `sweepable()`.
EXPERIMENTS = ("fig2", "fig4", "fig5", "fig7", "fig8", "table2", "table3", "depth")
SCALES = ("smoke", "cpu", "paper")
SWEEPABLE = ("fig5", "fig7", "table2", "table3")

#: The defaults of `isometry.experiments.fig2.Figure2Settings` that `isometry toy` offers.
FIG2_DEFAULTS = dict(depth=5, target=50.0, inputs=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8),
                     w_starts=(-1.5, -0.75, 0.5, 1.0, 1.75), lr=5e-06, max_steps=20000,
                     tol=1e-08, w_range=(-2.5, 2.5), alpha_range=(-1.5, 1.5), grid_size=400)
#: The defaults of `isometry.experiments.toy_depth.DepthSweepSettings` that `isometry toy` offers.
SWEEP_DEFAULTS = dict(depths=(2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 32), w0=1.0,
                      max_steps=200000)

#: The most devices `--simulate-devices` offers. The CPU backend's start grows faster than
#: linearly in the device count (a hundred thousand devices take minutes), and 4,096 is
#: already larger than the meshes the option exists to rehearse.
MAX_SIMULATED_DEVICES = 4096


def default_variant(model: str) -> str:
    """The variant of a command that builds one model (`train`, `diagnose`): "rezero", or
    the model's first variant where it has none."""
    variants = MODEL_VARIANTS[model]
    return "rezero" if "rezero" in variants else variants[0]
