"""The optax training loop the experiments use: one jitted step, α with its own learning rate,
spectra tracked on the way, and a run directory a killed run resumes from.

    model = models.FullyConnected(32, 256, variant="rezero", in_features=3072, out_features=10,
                                  rngs=nnx.Rngs(0))
    data = isometry.data.load_data("cifar10")
    result = train(model, data, TrainConfig(steps=5000, optimizer="adagrad", lr=0.01),
                   run_dir="runs/rezero", input_shape=(3072,))

The model is split into its graph, its `nnx.Param`s and the rest (BatchNorm statistics, RNG
state); the jitted step maps pure pytrees (params, rest, opt_state, x, y) to new ones.
Batch `s` (0-based) of the training stream is `data.train_batch(seed, s, batch_size)`, so the
data order, and with it the whole run, is a function of the seed: a run resumed from a
checkpoint ends where an uninterrupted one does (same compiled code, same inputs).

One module per concern:

  _config       `TrainConfig`, the constants, `RunConfigError`, `TrainingInterrupted`
  _optimizer    learning-rate schedules, PyTorch's Adagrad, `make_optimizer` (α's own rule)
  _step         the jitted train and eval steps
  _checkpoint   checkpoint.npz
  _run_dir      config.json and where a resumed run starts
  _loop         `train`: step, evaluate, record, checkpoint, stop
  _tracking     `Tracker`: spectra, α's and losses into metrics.jsonl and spectra/
  _watchdog     a run without progress says what it was doing and exits

Run directory (see `isometry.train._tracking` for metrics.jsonl and spectra/):

  config.json      the run's settings; `resume=True` with different settings raises
                   `RunConfigError` naming the keys that differ.
  checkpoint.npz   the state after step k: arrays "step", "layout" (`PARAM_LAYOUT`), "leaf_i"
                   (the i-th leaf of
                   (params, rest, opt_state) in pytree order; PRNG keys as "key_i" holding
                   their key data). Written atomically every `checkpoint_every` steps and
                   at the end, after the records of steps <= k are on disk; resuming cuts
                   records past k.

Losses: softmax cross-entropy in nats (mean over examples, or over tokens for language
models); accuracy; bits per byte = cross-entropy / ln 2 for byte-level language models.
"""

from isometry.train._checkpoint import load_checkpoint, save_checkpoint
from isometry.train._config import (ADAGRAD_STYLES, CHECKPOINT_FILE, CONFIG_FILE,
                                    FIXUP_LR_FACTORS, OPTIMIZERS, PARAM_LAYOUT,
                                    RESUMABLE_CHANGES, SCHEDULES, RunConfigError, TrainConfig,
                                    TrainingInterrupted)
from isometry.train._loop import TrainResult, train
from isometry.train._tracking import Tracker, load_spectrum, read_metrics, read_spectrum
from isometry.train._optimizer import learning_rate_schedule, make_optimizer, scale_by_torch_adagrad
from isometry.train._run_dir import run_config
from isometry.train._step import make_eval_step, make_train_step

__all__ = ["Tracker", "read_metrics", "read_spectrum", "load_spectrum", "TrainConfig",
           "TrainResult", "RunConfigError", "TrainingInterrupted", "train", "make_optimizer",
           "learning_rate_schedule", "make_train_step", "make_eval_step", "save_checkpoint",
           "load_checkpoint", "run_config", "scale_by_torch_adagrad", "OPTIMIZERS", "SCHEDULES",
           "ADAGRAD_STYLES", "FIXUP_LR_FACTORS", "CONFIG_FILE", "CHECKPOINT_FILE", "PARAM_LAYOUT", "RESUMABLE_CHANGES"]
