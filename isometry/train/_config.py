"""The settings of a training run (`TrainConfig`) and the errors a run directory raises."""

from __future__ import annotations

import dataclasses

__all__ = ["TrainConfig", "RunConfigError", "TrainingInterrupted", "OPTIMIZERS", "SCHEDULES",
           "ADAGRAD_STYLES", "FIXUP_LR_FACTORS", "RESUMABLE_CHANGES", "PARAM_LAYOUT",
           "OLD_LAYOUT", "CONFIG_FILE", "CHECKPOINT_FILE"]

OPTIMIZERS = ("adagrad", "sgd", "adam", "adamw")
#: FixUp's scalar biases and multipliers train at lr/10 (the FixUp code's parameter groups).
FIXUP_LR_FACTORS = tuple((name, 0.1) for name in ("bias1a", "bias1b", "bias2a", "bias2b",
                                                  "scale", "stem_bias", "head_bias"))
#: `TrainConfig.adagrad`: PyTorch's Adagrad (the paper's) or optax's defaults.
ADAGRAD_STYLES = ("pytorch", "optax")
SCHEDULES = ("constant", "step", "onecycle", "cosine")
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.npz"
#: The parameter layout of checkpoints and run directories: "stacked" = scanned layer stacks,
#: one leaf per stack with a leading layer axis (isometry 0.1 wrote one leaf per layer and no
#: marker; such files are refused, never loaded into the wrong leaves).
PARAM_LAYOUT = "stacked"
#: Why a file of isometry 0.1 is refused (after "run dir X" or "checkpoint X").
OLD_LAYOUT = ("was written by isometry 0.1, whose models kept one parameter per layer; models "
              "now stack their layers (one leaf per stack, a leading layer axis), so it cannot "
              "be loaded: start a new run directory")


class RunConfigError(ValueError):
    """A run directory holds a run with other settings than the ones asked for, or its files
    (config.json, checkpoint.npz) are missing or corrupt: nothing was changed in it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) after a checkpoint of the last finished step.

    Attributes:
      step: the last finished step (the checkpoint's); `resume=True` continues from it.
      run_dir: the run directory (None when the run writes none: nothing was saved).
    """

    def __init__(self, step: int, run_dir: str | None):
        super().__init__(f"stopped at step {step}")
        self.step, self.run_dir = step, run_dir


#: TrainConfig fields that are not part of a run's identity: a resumed run may change them.
#: `steps` too, when the learning rate does not depend on it (constant and step schedules).
RESUMABLE_CHANGES = ("checkpoint_every", "eval_every", "eval_batches")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
      steps: optimizer steps.
      batch_size: examples (or sequences) per step.
      optimizer: "adagrad", "sgd" (with `momentum`), "adam" or "adamw".
      adagrad: "pytorch" (default: `torch.optim.Adagrad`, as the paper ran it — the
        accumulator starts at 0 and the update is g/(√G + 1e-10), so the first step is
        −lr·sign(g)) or "optax" (`optax.adagrad`: accumulator from 0.1, g/√(G + 1e-7), whose
        first step is lr·g/√(0.1 + g²), far smaller for small gradients).
      lr: peak learning rate of all parameters but α.
      alpha_lr: learning rate of the α's (None: `lr`); α's never get weight decay.
      lr_factors: ((name, factor), …): leaves with a key `name` on their path train at
        lr·factor (with weight decay), e.g. FixUp's scalar biases and multipliers at lr/10 as
        in the FixUp code (`FIXUP_LR_FACTORS`).
      momentum: SGD momentum in [0, 1) (0 for plain SGD; the other optimizers have none).
      weight_decay: L2 (>= 0) coupled to the gradient for sgd/adagrad/adam (PyTorch style),
        decoupled for adamw; never applied to α.
      warmup: steps of linear warm-up from 0 to the peak rate.
      schedule: after warm-up: "constant"; "step" (multiply by `decay_factor` at each step in
        `decay_steps`); "onecycle" (optax's cosine one-cycle); "cosine" (decay to 0). See
        `learning_rate_schedule`.
      decay_steps, decay_factor: the "step" schedule (which needs at least one; other
        schedules take none): the steps (>= 1; one past `steps` never comes) where the rate
        is multiplied by decay_factor > 0.
      clip: clip gradients to this global norm (None: no clipping).
      seed: seed of the data order, >= 0 (model initialization is the caller's `nnx.Rngs`).
      eval_every: evaluate on the held-out split every this many steps (0: only at the end).
      eval_batches: batches of the held-out split per evaluation, >= 1 (None: all).

    Raises:
      ValueError: naming every setting outside its range, or one that does not apply (decay
        steps without the "step" schedule, the "step" schedule without decay steps).
      checkpoint_every: write checkpoint.npz every this many steps (and at the end).
    """

    steps: int
    batch_size: int = 100
    optimizer: str = "adagrad"
    adagrad: str = "pytorch"
    lr: float = 0.01
    alpha_lr: float | None = None
    lr_factors: tuple[tuple[str, float], ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: int = 0
    schedule: str = "constant"
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    clip: float | None = None
    seed: int = 0
    eval_every: int = 0
    eval_batches: int | None = 10
    checkpoint_every: int = 500

    def __post_init__(self):
        problems = []
        if self.steps < 1 or self.batch_size < 1:
            problems.append(f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if any(not f > 0 for _, f in self.lr_factors):
            problems.append(f"lr_factors must be positive, got {self.lr_factors}")
        if self.adagrad not in ADAGRAD_STYLES:
            problems.append(f"unknown adagrad style {self.adagrad!r}; use one of {ADAGRAD_STYLES}")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if not self.lr > 0 or (self.alpha_lr is not None and not self.alpha_lr >= 0):
            problems.append(f"learning rates must be positive (lr={self.lr}, alpha_lr={self.alpha_lr})")
        if self.warmup < 0 or self.warmup >= max(self.steps, 1) and self.warmup:
            problems.append(f"warmup must be in [0, steps), got {self.warmup}")
        if self.clip is not None and not self.clip > 0:
            problems.append(f"clip must be positive, got {self.clip}")
        if self.checkpoint_every < 1 or self.eval_every < 0:
            problems.append("checkpoint_every must be >= 1 and eval_every >= 0")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.decay_factor > 0:
            problems.append(f"decay_factor must be positive, got {self.decay_factor}")
        if self.schedule == "step" and not self.decay_steps:
            problems.append("the step schedule needs decay_steps (the steps where the rate is "
                            "multiplied by decay_factor; `--decay-steps 500,750`)")
        if self.schedule != "step" and self.decay_steps:
            problems.append(f"decay_steps apply to the step schedule only, not to "
                            f"{self.schedule!r} (set schedule='step' or leave them out)")
        if any(s < 1 for s in self.decay_steps):
            problems.append(f"decay_steps must be steps >= 1, got {list(self.decay_steps)}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if self.eval_batches is not None and self.eval_batches < 1:
            problems.append(f"eval_batches must be >= 1 (None: all), got {self.eval_batches}")
        if problems:
            raise ValueError("; ".join(problems))
