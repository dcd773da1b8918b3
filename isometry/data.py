"""Data sets for training: local CIFAR-10 and enwik8 files in their standard formats, any local
text file, and a synthetic image task that needs no download.

Every data set is deterministic: the training batch of step `s` is a function of (seed, s)
only, so a run resumed from a checkpoint sees exactly the batches an uninterrupted run sees.

    data = load_data("cifar10", path="~/data/cifar-10-python.tar.gz")
    x, y = data.train_batch(seed=0, step=17, batch_size=100)   # the same arrays every time
    for x, y in data.eval_batches(batch_size=100, max_batches=10): ...

Sources (`load_data(name)`):

  synthetic      Gaussian class prototypes: 10 classes, 32×32×3 images (or `synthetic:HxWxC`).
                 Image x of class y is x = (s/√d) μ_y + ε with μ_y, ε ~ N(0, I) elementwise, d
                 pixels and s = 3 (prototypes about 4.2 noise units apart, whatever d); the
                 prototypes come from a fixed seed (0), the examples from (seed, step). An
                 infinite training stream; the held-out split is its own stream. Epoch = 50 000.
  cifar10        `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder
                 (pickled `data_batch_1`…`data_batch_5`, `test_batch`); path by argument or
                 `$ISOMETRY_CIFAR10`. Pixels scaled to [−1, 1] ((x/255 − 0.5)/0.5), NHWC.
  enwik8         the raw enwik8 file (or `enwik8.zip`); path by argument or `$ISOMETRY_ENWIK8`.
                 Bytes are tokens (vocab 256); split 90%/5%/5% — the usual 90M/5M/5M for the
                 100M-byte file.
  text:PATH      any local file as bytes, split like enwik8: character language modelling.

Language-model batches are windows of `seq_len + 1` bytes at positions drawn from (seed, step);
inputs are the first `seq_len` bytes, targets the last `seq_len`. Held-out evaluation uses
consecutive non-overlapping windows of the validation split.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
import tarfile
import zipfile
import zlib
from typing import Iterator

import numpy as np

__all__ = ["Task", "DataError", "ImageClassification", "SyntheticImages", "ByteCorpus",
           "load_data", "load_cifar10", "load_bytes", "check_enwik8", "DATA_SOURCES",
           "ENWIK8_BYTES"]

DATA_SOURCES = ("synthetic", "cifar10", "enwik8", "text:PATH")
CIFAR10_ENV = "ISOMETRY_CIFAR10"
ENWIK8_ENV = "ISOMETRY_ENWIK8"
#: The standard enwik8 split, as fractions of the file (90M/5M/5M of 100M bytes).
BYTE_SPLIT = (0.90, 0.05, 0.05)
#: enwik8 is the first 10^8 bytes of the English Wikipedia dump of 2006-03-03, an XML file.
ENWIK8_BYTES = 100_000_000
ENWIK8_START = b"<mediawiki "


class DataError(ValueError):
    """A data file is missing, unreadable or not in the expected format."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What a data set asks of a model.

    Attributes:
      kind: "classification" (x: float images, y: int class) or "language_model"
        (x: int tokens (seq_len,), y: the next tokens (seq_len,)).
      input_shape: shape of one input, without the batch axis.
      num_classes: number of classes, or the vocabulary size of a language model.
    """

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int


def permutation_position(seed: int, n: int, positions: np.ndarray, cache: dict) -> np.ndarray:
    """Example index at global positions p = step·B + i: epoch p // n, shuffled by (seed, epoch)."""
    out = np.empty(positions.shape, np.int64)
    for epoch in np.unique(positions // n):
        key = (seed, int(epoch))
        if key not in cache:
            if len(cache) > 2:
                cache.clear()
            cache[key] = np.random.default_rng(list(key)).permutation(n)
        sel = positions // n == epoch
        out[sel] = cache[key][positions[sel] % n]
    return out


class ImageClassification:
    """Images held in memory as uint8 (NHWC) with integer labels; scaled to [−1, 1] per batch."""

    def __init__(self, name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, num_classes: int = 10):
        self.name = name
        self.train_x, self.train_y = train_x, train_y.astype(np.int32)
        self.test_x, self.test_y = test_x, test_y.astype(np.int32)
        self.task = Task("classification", tuple(train_x.shape[1:]), num_classes)
        self.examples_per_epoch = len(train_x)
        self._perms: dict = {}

    @staticmethod
    def _scale(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255.0 - 0.5) / 0.5

    def train_batch(self, seed: int, step: int, batch_size: int):
        """Batch `step` of the shuffled training stream: epoch e uses permutation (seed, e)."""
        pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
        idx = permutation_position(seed, self.examples_per_epoch, pos, self._perms)
        return self._scale(self.train_x[idx]), self.train_y[idx]

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator:
        """The test split in order, in batches (the last one may be smaller)."""
        n = len(self.test_x)
        for b, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self._scale(self.test_x[start:start + batch_size]), self.test_y[start:start + batch_size]

    def probe_inputs(self, n: int) -> np.ndarray:
        """The first n test images (fixed probes for Jacobian spectra)."""
        return self._scale(self.test_x[:n])


class SyntheticImages:
    """Gaussian class prototypes: x = (s/√d) μ_y + ε, μ_y, ε ~ N(0, I); no download needed.

    Classes overlap (the Bayes error is not 0 at s = 3), so the loss curves of architectures
    differ in how fast they fit, not only whether. Examples are generated per batch from
    (seed, step); the prototypes from `task_seed`.
    """

    def __init__(self, shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10,
                 task_seed: int = 0, examples_per_epoch: int = 50_000, separation: float = 3.0):
        if num_classes < 2 or any(d < 1 for d in shape):
            raise DataError(f"synthetic task needs >= 2 classes and a positive shape, got "
                            f"{num_classes} classes, shape {shape}")
        self.name = "synthetic"
        self.task = Task("classification", tuple(shape), num_classes)
        self.examples_per_epoch = examples_per_epoch
        self.prototypes = np.random.default_rng([task_seed, 2**31]).standard_normal(
            (num_classes, *shape), dtype=np.float32) * np.float32(separation / np.sqrt(np.prod(shape)))

    def _examples(self, rng: np.random.Generator, n: int):
        y = rng.integers(0, self.task.num_classes, n, dtype=np.int32)
        noise = rng.standard_normal((n, *self.task.input_shape), dtype=np.float32)
        return self.prototypes[y] + noise, y

    def train_batch(self, seed: int, step: int, batch_size: int):
        return self._examples(np.random.default_rng([seed, 0, step]), batch_size)

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator:
        for b in range(10 if max_batches is None else max_batches):
            yield self._examples(np.random.default_rng([2**31, 1, b]), batch_size)

    def probe_inputs(self, n: int) -> np.ndarray:
        return self._examples(np.random.default_rng([2**31, 2]), n)[0]


def _describe(a: np.ndarray) -> str:
    span = (f", values {a.min()}..{a.max()}" if a.size and np.issubdtype(a.dtype, np.number)
            else "")
    return f"shape {a.shape}, dtype {a.dtype}{span}"


class ByteCorpus:
    """A byte string split into train/valid/test for character language modelling (vocab 256)."""

    def __init__(self, name: str, data: bytes | np.ndarray, seq_len: int,
                 split: tuple[float, float, float] = BYTE_SPLIT):
        tokens = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not (np.issubdtype(tokens.dtype, np.integer) and tokens.size
                                     and 0 <= tokens.min() and tokens.max() <= 255):
            raise DataError(f"{name}: tokens must be a 1-d sequence of byte values 0..255 (vocab "
                            f"256), got {_describe(tokens)}")
        n = len(tokens)
        n_train, n_valid = int(round(n * split[0])), int(round(n * split[1]))
        self.train = tokens[:n_train]
        self.valid = tokens[n_train:n_train + n_valid]
        self.test = tokens[n_train + n_valid:]
        smallest = min(len(self.train), len(self.valid), len(self.test))
        if seq_len < 1 or smallest < seq_len + 1:
            raise DataError(f"{name}: {n} bytes split {split} leaves {smallest} bytes in the "
                            f"smallest split, fewer than seq_len + 1 = {seq_len + 1}; use a larger "
                            f"file or a shorter --seq-len")
        self.name = name
        self.seq_len = seq_len
        self.task = Task("language_model", (seq_len,), 256)
        self.examples_per_epoch = max(1, len(self.train) // seq_len)

    def _windows(self, tokens: np.ndarray, starts: np.ndarray):
        w = tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int32)
        return w[:, :-1], w[:, 1:]

    def train_batch(self, seed: int, step: int, batch_size: int):
        """Windows at random positions drawn from (seed, step)."""
        rng = np.random.default_rng([seed, 0, step])
        starts = rng.integers(0, len(self.train) - self.seq_len, batch_size)
        return self._windows(self.train, starts)

    def eval_batches(self, batch_size: int, max_batches: int | None = None,
                     split: str = "valid") -> Iterator:
        """Consecutive non-overlapping windows of the validation (or test) split."""
        tokens = self.valid if split == "valid" else self.test
        starts = np.arange(0, len(tokens) - self.seq_len, self.seq_len)
        for b, at in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self._windows(tokens, starts[at:at + batch_size])

    def probe_inputs(self, n: int) -> np.ndarray:
        """n windows from the start of the validation split."""
        starts = np.arange(n) * self.seq_len % max(1, len(self.valid) - self.seq_len)
        return self._windows(self.valid, starts)[0]


# --- loading files -----------------------------------------------------------------------------

def _resolve_path(path, env: str, what: str, expected: str) -> str:
    path = path or os.environ.get(env)
    if not path:
        raise DataError(f"{what} not found: pass its path (--data-path) or set ${env} to {expected}")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise DataError(f"{what} not found at {path!r}: expected {expected}")
    return path


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_CIFAR_EXPECTED = ("cifar-10-python.tar.gz or the extracted cifar-10-batches-py/ folder with "
                   "data_batch_1..5 and test_batch (https://www.cs.toronto.edu/~kriz/cifar.html)")


def _cifar_batch(raw: bytes, where: str):
    try:
        d = pickle.loads(raw, encoding="bytes")
        x, y = d[b"data"], d[b"labels"]
        x = np.asarray(x, np.uint8)
        y = np.asarray(y, np.int64)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{where} is not a CIFAR-10 python batch (a pickled dict with b'data' "
                        f"uint8 (n, 3072) and b'labels'): {type(err).__name__}: {err}") from None
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) or (y.size and not 0 <= y.min() <= y.max() < 10):
        raise DataError(f"{where}: expected data (n, 3072) uint8 and n labels in 0..9, got data "
                        f"{x.shape} and labels {y.shape}")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def load_cifar10(path: str | None = None) -> ImageClassification:
    """CIFAR-10 from its python-format archive or extracted folder (path or $ISOMETRY_CIFAR10)."""
    path = _resolve_path(path, CIFAR10_ENV, "CIFAR-10", _CIFAR_EXPECTED)
    batches = {}
    if os.path.isdir(path):
        folder = path
        if not os.path.exists(os.path.join(folder, "test_batch")):
            folder = os.path.join(path, "cifar-10-batches-py")
        for name in CIFAR10_FILES:
            f = os.path.join(folder, name)
            if not os.path.isfile(f):
                raise DataError(f"CIFAR-10 folder {path!r} has no {name}: expected {_CIFAR_EXPECTED}")
            with open(f, "rb") as fh:
                batches[name] = _cifar_batch(fh.read(), f)
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
                for name in CIFAR10_FILES:
                    if name not in members:
                        raise DataError(f"CIFAR-10 archive {path!r} has no {name}: expected "
                                        f"{_CIFAR_EXPECTED}")
                    batches[name] = _cifar_batch(tar.extractfile(members[name]).read(),
                                                 f"{path}:{members[name].name}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataError(f"CIFAR-10 archive {path!r} is unreadable ({err}): expected "
                            f"{_CIFAR_EXPECTED}") from None
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return ImageClassification("cifar10", np.concatenate([b[0] for b in train]),
                               np.concatenate([b[1] for b in train]), *batches["test_batch"])


def load_bytes(path: str, *, name: str | None = None) -> bytes:
    """The bytes of a raw file, or of the single member of a .zip archive (enwik8.zip).

    A file that starts like a zip archive (or is named .zip) but does not open as one — a
    truncated download — is a `DataError`, never a corpus of its own bytes.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        looks_zip = magic in (b"PK\x03\x04", b"PK\x05\x06") or path.lower().endswith(".zip")
        if looks_zip and not zipfile.is_zipfile(path):
            raise DataError(f"{name or path}: {path!r} looks like a zip archive but does not open as "
                            f"one (truncated or corrupt download?): download it again")
        if looks_zip:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise DataError(f"{path!r}: expected a zip archive with one file, found {names}")
                return z.read(names[0])
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{name or path}: cannot read {path!r}: {err}") from None


def check_enwik8(data: bytes, path: str) -> bytes:
    """`data` if it is enwik8: it starts as the Wikipedia XML dump does (`<mediawiki `), else a
    `DataError` naming what it starts with. A size other than 10^8 bytes (a cut or a part of
    it) is a warning: its BPB is not comparable with published enwik8 numbers."""
    if not data.startswith(ENWIK8_START):
        raise DataError(f"enwik8: {path!r} is not enwik8 (it starts with {data[:16]!r}, enwik8 "
                        f"with {ENWIK8_START!r}); download http://mattmahoney.net/dc/enwik8.zip, "
                        f"or train on any file as bytes with --data text:PATH")
    if len(data) != ENWIK8_BYTES:
        warnings.warn(f"enwik8: {path!r} has {len(data):,} bytes, not {ENWIK8_BYTES:,}: a part "
                      f"of enwik8, whose bits per byte are not comparable with published enwik8 "
                      f"results", stacklevel=3)
    return data


def load_data(source: str, *, path: str | None = None, seq_len: int = 128) -> object:
    """A data set by name: "synthetic[:HxWxC]", "cifar10", "enwik8" or "text:PATH".

    Args:
      source: the data set (see the module docstring).
      path: file or folder for cifar10 / enwik8 (else the environment variable).
      seq_len: window length of language-model examples.

    Returns:
      An object with `task`, `examples_per_epoch`, `train_batch(seed, step, batch_size)`,
      `eval_batches(batch_size, max_batches)` and `probe_inputs(n)`.
    """
    kind, _, arg = source.partition(":")
    if kind == "synthetic":
        shape = (32, 32, 3)
        if arg:
            try:
                shape = tuple(int(d) for d in arg.lower().split("x"))
            except ValueError:
                raise DataError(f"synthetic shape must look like 32x32x3, got {arg!r}") from None
        return SyntheticImages(shape)
    if kind == "cifar10":
        return load_cifar10(path)
    if kind == "enwik8":
        p = _resolve_path(path, ENWIK8_ENV, "enwik8",
                          "the raw 100M-byte enwik8 file or enwik8.zip (http://mattmahoney.net/dc/enwik8.zip)")
        return ByteCorpus("enwik8", check_enwik8(load_bytes(p, name="enwik8"), p), seq_len)
    if kind == "text" and arg:
        p = os.path.expanduser(arg)
        if not os.path.isfile(p):
            raise DataError(f"text file not found at {p!r}: expected text:PATH to name a local file")
        return ByteCorpus(f"text:{arg}", load_bytes(p), seq_len)
    raise DataError(f"unknown data {source!r}; use one of {', '.join(DATA_SOURCES)}")
