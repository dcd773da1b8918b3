"""The optax optimizer of a run: learning-rate schedules, PyTorch's Adagrad, a rule for α."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from isometry._params import alpha_mask, path_names
from isometry.train._config import TrainConfig

__all__ = ["learning_rate_schedule", "cosine_onecycle_schedule", "scale_by_torch_adagrad",
           "make_optimizer", "with_standard_promotion"]


def _cosine_between(start, end, pct):
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)


def cosine_onecycle_schedule(steps: int, peak: float, pct_start: float = 0.3,
                             div_factor: float = 25.0,
                             final_div_factor: float = 1e4) -> optax.Schedule:
    """`optax.cosine_onecycle_schedule`'s rates, computed without mixing dtypes.

    Cosine from peak/div_factor up to peak over the first int(pct_start·steps) updates, then
    down to peak/(div_factor·final_div_factor) at `steps`, constant after. (optax's own
    multiplies a boolean mask with float rates, which strict dtype promotion refuses.)

    >>> one = cosine_onecycle_schedule(10, 1.0)
    >>> [round(float(one(i)), 4) for i in (0, 3, 10)]
    [0.04, 1.0, 0.0]
    """
    rise = int(pct_start * steps)
    low = peak / div_factor
    high = low * div_factor
    final = high * (1.0 / (div_factor * final_div_factor))

    def schedule(count):
        count = jnp.asarray(count)
        up = _cosine_between(low, high, count / max(rise, 1))
        down = _cosine_between(high, final, (count - rise) / max(steps - rise, 1))
        return jnp.where(count < rise, up, jnp.where(count < steps, down, final))

    return schedule


def learning_rate_schedule(peak: float, config: TrainConfig) -> optax.Schedule:
    """Warm-up then the configured schedule, as a function of the 0-based update count.

    "constant": linear warm-up 0 → peak over `warmup` steps, then peak.
    "step": after warm-up, peak × decay_factor^(number of `decay_steps` passed).
    "cosine": after warm-up, cosine decay from peak to 0 at `steps`.
    "onecycle": optax's cosine one-cycle over `steps`: rises from peak/25 to peak over
      `warmup` steps (30% of the steps when warmup = 0), then falls to peak/25e4.
    """
    w, n = config.warmup, config.steps
    if config.schedule == "onecycle":
        return cosine_onecycle_schedule(n, peak, pct_start=(w / n) if w else 0.3)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, w, n, end_value=0.0) if w else \
            optax.cosine_decay_schedule(peak, n)
    if config.schedule == "step":
        after = optax.piecewise_constant_schedule(
            peak, {int(s) - w: config.decay_factor for s in sorted(config.decay_steps) if s > w})
    else:
        after = optax.constant_schedule(peak)
    if not w:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, w), after], [w])


def scale_by_torch_adagrad(eps: float = 1e-10) -> optax.GradientTransformation:
    """PyTorch's Adagrad scaling: G_t = G_{t−1} + g_t² from G_0 = 0, update g_t / (√G_t + eps).

    With a learning rate after it (`optax.scale_by_learning_rate`) this is
    `torch.optim.Adagrad(lr, lr_decay=0, initial_accumulator_value=0, eps=1e-10)`: its first
    step is −lr·g/(|g| + eps) ≈ −lr·sign(g), whatever the gradient's size. (`optax.adagrad`
    starts G at 0.1 and divides by √(G + eps), so its first step is lr·g/√(0.1 + g²).)

    Example:
      >>> tx = optax.chain(scale_by_torch_adagrad(), optax.scale_by_learning_rate(0.1))
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, _ = tx.update({"w": jnp.array([1e-3, -4.0])}, tx.init(params))
      >>> [round(float(u), 6) for u in updates["w"]]
      [-0.1, 0.1]
    """

    def init(params):
        return optax.ScaleByRssState(sum_of_squares=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        sums = jax.tree_util.tree_map(lambda s, g: s + jnp.square(g), state.sum_of_squares,
                                      updates)
        updates = jax.tree_util.tree_map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return updates, optax.ScaleByRssState(sum_of_squares=sums)

    return optax.GradientTransformation(init, update)


def _base_optimizer(config: TrainConfig, lr: optax.Schedule, weight_decay: float):
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    match config.optimizer:
        case "adagrad" if config.adagrad == "pytorch":
            return optax.chain(*decay, scale_by_torch_adagrad(), optax.scale_by_learning_rate(lr))
        case "adagrad":
            return optax.chain(*decay, optax.adagrad(lr))
        case "sgd":
            return optax.chain(*decay, optax.sgd(lr, momentum=config.momentum or None))
        case "adam":
            return optax.chain(*decay, optax.adam(lr))
        case "adamw":
            return optax.adamw(lr, weight_decay=weight_decay)


def _lr_label(path, is_alpha: bool, factors: dict) -> str:
    if is_alpha:
        return "alpha"
    names = set(path_names(path))
    hits = [name for name in factors if name in names]
    return f"factor:{hits[0]}" if hits else "rest"


def make_optimizer(config: TrainConfig, params: Any) -> optax.GradientTransformation:
    """The optax optimizer: global-norm clipping, then separate rules for α and the rest.

    α (leaves on a path with a key named `alpha`, `isometry.alpha_mask`) gets the same
    optimizer with learning rate `alpha_lr` (warm-up and schedule included) and no weight decay;
    leaves named in `config.lr_factors` get lr·factor. Raises ValueError for an `alpha_lr`
    given to a model without α.
    """
    alpha_lr = config.lr if config.alpha_lr is None else config.alpha_lr
    factors = dict(config.lr_factors)
    mask = alpha_mask(params)
    if config.alpha_lr is not None and not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError(f"alpha_lr={config.alpha_lr} was given, but the model has no α "
                         f"(no parameter named alpha): leave alpha_lr out (`--alpha-lr`) or "
                         f"train a variant with α")
    labels = jax.tree_util.tree_map_with_path(lambda path, a: _lr_label(path, a, factors), mask)
    rules = {"rest": _base_optimizer(config, learning_rate_schedule(config.lr, config),
                                     config.weight_decay),
             "alpha": _base_optimizer(config, learning_rate_schedule(alpha_lr, config), 0.0)}
    for name, factor in factors.items():
        rules[f"factor:{name}"] = _base_optimizer(
            config, learning_rate_schedule(config.lr * factor, config), config.weight_decay)
    tx = optax.multi_transform(rules, labels)
    tx = optax.chain(optax.clip_by_global_norm(config.clip), tx) if config.clip else tx
    return with_standard_promotion(tx)


def with_standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` with its `init` and `update` traced under JAX's standard dtype promotion.

    optax mixes dtypes inside its transformations (Adam's bias correction raises a Python
    float to the integer step count), which `jax_numpy_dtype_promotion="strict"` refuses; the
    optimizer state and updates are the same as without the wrapper. Code outside optax stays
    under the caller's setting.
    """

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init, update)
