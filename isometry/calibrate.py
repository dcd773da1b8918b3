"""BatchNorm statistics that mean something before a Jacobian is taken.

A BatchNorm in eval mode normalizes with its running averages, which start at mean 0 and
variance 1: at initialization (and for the first training steps, with momentum 0.9) they are
not the statistics of any data, and a Jacobian taken through them describes no network that
ever ran. (A vanilla ResNet-110 at step 0: χ ≈ 4e10 with the initial (0, 1); about 5e2 with
statistics from one batch of data.) Calibration replaces every running mean and variance by
the statistics of a batch of inputs: one forward pass with BatchNorm in train mode and
momentum 0, everything else (dropout) in eval mode.

`batchnorm_calibration(model, x)` returns a pure, jittable `state -> state` that does this for
any parameters of the model's structure, so a tracker can calibrate at every spectrum step
inside the compiled spectrum function; `calibrate_batchnorm(model, x)` updates a module in
place. Models without BatchNorm are returned unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from isometry._adapters import graph_fn

__all__ = ["batchnorm_calibration", "calibrate_batchnorm", "has_batchnorm"]


def _batchnorms(module: nnx.Module) -> list[nnx.BatchNorm]:
    return [m for _, m in nnx.iter_modules(module) if isinstance(m, nnx.BatchNorm)]


def has_batchnorm(module: nnx.Module) -> bool:
    """True when the module holds at least one `nnx.BatchNorm`."""
    return bool(_batchnorms(module))


def batchnorm_calibration(model: nnx.Module, x: Any) -> Callable[[Any], Any]:
    """A jittable `state -> state` whose BatchNorm running statistics are those of `x`.

    Args:
      model: the module (its structure and modes; its own state is not changed).
      x: a batch of inputs as the model takes them (e.g. images (N, H, W, C)).

    Returns:
      `calibrated(state)`: `state` (the model's `nnx.state`, any values of the same structure)
      with every BatchNorm's mean and variance replaced by the batch statistics of the
      activations `x` produces, layer after layer (one pass; later layers see the calibrated
      earlier ones). Everything else in `state` is returned as it was.

    Example:
      >>> import jax.numpy as jnp
      >>> net = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
      >>> net.eval()
      >>> x = 5.0 + jnp.arange(8.0).reshape(4, 2)
      >>> state = batchnorm_calibration(net, x)(nnx.state(net))
      >>> bool(jnp.allclose(state["layers"][1]["mean"][...], net.layers[0](x).mean(axis=0)))
      True
      >>> float(net.layers[1].mean[...].sum())  # the module itself keeps its statistics
      0.0
    """
    probe = nnx.clone(model)
    probe.eval()
    for bn in _batchnorms(probe):
        bn.use_running_average = False
        bn.momentum = 0.0
    train_pass = graph_fn(nnx.graphdef(probe), with_state=nnx.BatchStat)

    def calibrated(state):
        _, stats = train_pass(jax.tree_util.tree_map(lambda a: a, state), x)  # no aliasing
        return nnx.merge_state(state, stats)

    return calibrated


def calibrate_batchnorm(model: nnx.Module, x: Any) -> nnx.Module:
    """Sets every BatchNorm's running statistics of `model` to those of the batch `x`, in place.

    Returns the model (in the mode it was in). See `batchnorm_calibration`.
    """
    if has_batchnorm(model):
        nnx.update(model, batchnorm_calibration(model, x)(nnx.state(model)))
    return model
