"""Training runs of the experiments: one run directory each, resumed when it already exists,
and the first step at which a smoothed curve crosses a threshold.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from isometry.data import ByteCorpus, SyntheticImages, load_cifar10, load_data, permutation_position
from isometry.train._tracking import read_metrics
from isometry.train import CONFIG_FILE, RunConfigError, train

__all__ = ["train_run", "first_crossing", "smooth", "text_corpus", "language_data",
           "image_data", "mean_std", "FixedTrainingSet"]

#: The local text used for language models when no enwik8 is given: the Python standard
#: library's own source files, sorted by path and concatenated (no download; deterministic
#: for one Python version).
STDLIB_TEXT = "python-stdlib-source"


@dataclasses.dataclass(frozen=True)
class CharLMSettings:
    """Size and optimization of a character-level Transformer LM (Figures 7 and 8).

    The paper-scale defaults (d 512, 8 heads, FFN 2048, sequence 512, Adam lr 1e-3, clip 0.5)
    are our choice: the paper's enwik8 hyperparameters are not in our copy of it.
    """

    depth: int = 12
    d_model: int = 512
    heads: int = 8
    ffn: int = 2048
    seq_len: int = 512
    batch_size: int = 16
    steps: int = 20_000
    lr: float = 1e-3
    clip: float | None = 0.5
    log_every: int = 50
    text_bytes: int = 4_000_000


def train_run(model, data, config, run_dir: str, *, input_shape=None, probes: int = 0,
              track_every: int = 100, log_every: int = 10, run_info: dict | None = None,
              calibrate_batchnorm: bool = False):
    """Trains `model` with `isometry.train.train` into `run_dir` (resuming a finished or killed
    run with the same settings); returns (records of metrics.jsonl, TrainResult)."""

    resume = os.path.exists(os.path.join(run_dir, CONFIG_FILE))  # a run is there: continue it
    try:
        result = train(model, data, config, run_dir=run_dir, resume=resume, run_info=run_info,
                       input_shape=input_shape, probes=probes, track_every=track_every,
                       log_every=log_every, progress=False,
                       calibrate_batchnorm=calibrate_batchnorm)
    except RunConfigError as err:
        raise RunConfigError(f"{err}; delete {run_dir!r} (or pass another --runs folder) to "
                             f"start it again") from None
    return read_metrics(run_dir), result


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average over `window` records (NaN stays NaN; shorter at the start)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or not len(v):
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def first_crossing(steps, values, threshold: float, *, below: bool = True) -> int | None:
    """The first step whose value is <= threshold (>= when `below` is False), or None."""
    v = np.asarray(values, dtype=float)
    hit = v <= threshold if below else v >= threshold
    idx = np.nonzero(hit & np.isfinite(v))[0]
    return int(np.asarray(steps)[idx[0]]) if len(idx) else None


def mean_std(curves: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over runs of curves cut to the shortest (a diverged run
    stops early)."""
    n = min(len(c) for c in curves)
    a = np.array([np.asarray(c[:n], dtype=float) for c in curves])
    return a.mean(axis=0), a.std(axis=0)


def text_corpus(max_bytes: int) -> bytes:
    """The first `max_bytes` bytes of the standard library's .py files, sorted by path."""
    root = os.path.dirname(os.__file__)
    out, size = [], 0
    for path in sorted(glob.glob(os.path.join(root, "*.py"))
                       + glob.glob(os.path.join(root, "*", "*.py"))):
        if "site-packages" in path or "test" in os.path.relpath(path, root).split(os.sep)[0]:
            continue
        with open(path, "rb") as f:
            chunk = f.read()
        out.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return b"".join(out)[:max_bytes]


def language_data(data_dir: str | None, seq_len: int, text_bytes: int):
    """enwik8 from `data_dir` (enwik8 or enwik8.zip) when present, else the stdlib text."""

    for name in ("enwik8", "enwik8.zip"):
        if data_dir and os.path.isfile(os.path.join(data_dir, name)):
            return load_data("enwik8", path=os.path.join(data_dir, name), seq_len=seq_len)
    return ByteCorpus(STDLIB_TEXT, text_corpus(text_bytes), seq_len)


def image_data(data_dir: str | None, synthetic_shape: tuple[int, int, int]):
    """CIFAR-10 from `data_dir` (the .tar.gz or the extracted folder) when present, else the
    synthetic Gaussian-prototype images of `synthetic_shape`."""

    for name in ("cifar-10-python.tar.gz", "cifar-10-batches-py"):
        if data_dir and os.path.exists(os.path.join(data_dir, name)):
            return load_cifar10(os.path.join(data_dir, name))
    return SyntheticImages(tuple(synthetic_shape))


class FixedTrainingSet:
    """The first `size` training examples of a data set, held fixed: a task to overfit.

    Batches are shuffled epochs of those examples (as `isometry.data.ImageClassification`
    does); `eval_batches` is the fixed set itself, so the evaluation loss is the loss on the
    whole training set.
    """

    def __init__(self, data, size: int, seed: int = 0):
        self.train_x, self.train_y = data.train_batch(seed, 0, size)
        self.name = f"{data.name} ({size} fixed examples)"
        self.task = data.task
        self.examples_per_epoch = size
        self._perms: dict = {}

    def train_batch(self, seed: int, step: int, batch_size: int):
        pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
        idx = permutation_position(seed, self.examples_per_epoch, pos, self._perms)
        return self.train_x[idx], self.train_y[idx]

    def eval_batches(self, batch_size: int, max_batches: int | None = None):
        for b, start in enumerate(range(0, self.examples_per_epoch, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self.train_x[start:start + batch_size], self.train_y[start:start + batch_size]

    def probe_inputs(self, n: int) -> np.ndarray:
        return self.train_x[:n]


def settings_dict(settings) -> dict:
    return dataclasses.asdict(settings)
