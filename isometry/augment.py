"""The standard CIFAR augmentation: per-channel standardization, random crops, horizontal flips.

What the ReZero authors and FixUp trained their ResNets with (torchvision's
`RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `Normalize(mean, std)`):

    x ← (x − μ_c) / σ_c                      per channel c, μ and σ of the training images
    x ← crop(pad(x, p), dy, dx)              dy, dx ~ U{0, …, 2p}, zero padding (p = 4)
    x ← x[:, ::−1] with probability 1/2      horizontal flip

`random_crop_flip` is a pure, jittable function of a PRNG key and a batch (NHWC).
`Augmented` wraps an image data set of `isometry.data`: its training batch of step s is
augmented with the key (seed, s), so a resumed run sees exactly the batches an uninterrupted
run sees; held-out batches and probes are standardized only. One difference from
torchvision: padding is applied after standardization, so the border is the channel mean
rather than black.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["random_crop_flip", "channel_statistics", "Augmented"]


@functools.partial(jax.jit, static_argnames=("padding", "flip"))
def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4,
                     flip: bool = True) -> jax.Array:
    """Each image of an NHWC batch cropped at a random offset of its zero-padded copy and
    flipped left-right with probability 1/2.

    Args:
      key: PRNG key.
      images: (N, H, W, C).
      padding: pixels of zero padding on every side (the crop offset is in [0, 2·padding]).
      flip: flip left-right with probability 1/2 (False: crops only).

    Returns:
      The augmented batch, same shape and dtype.

    Example:
      >>> x = jnp.arange(2 * 4 * 4 * 1.0).reshape(2, 4, 4, 1)
      >>> random_crop_flip(jax.random.key(0), x, padding=1).shape
      (2, 4, 4, 1)
    """
    n, h, w, c = images.shape
    k_y, k_x, k_flip = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy = jax.random.randint(k_y, (n,), 0, 2 * padding + 1)
    dx = jax.random.randint(k_x, (n,), 0, 2 * padding + 1)
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
        padded, dy, dx)
    if not flip:
        return crops
    flipped = jax.random.bernoulli(k_flip, 0.5, (n,))
    return jnp.where(flipped[:, None, None, None], crops[:, :, ::-1, :], crops)


def channel_statistics(data, n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel of the first `n` training examples of an image data set."""
    n = min(n, getattr(data, "examples_per_epoch", n))
    x, _ = data.train_batch(seed, 0, n)
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.mean(axis=0).astype(np.float32), x.std(axis=0).astype(np.float32)


class Augmented:
    """An image data set with the standard augmentation on its training batches.

    Args:
      data: an image data set of `isometry.data` (`train_batch`, `eval_batches`,
        `probe_inputs`, `task`).
      padding: crop padding in pixels (4 for 32×32 CIFAR images; 0 turns crops off).
      flip: random horizontal flips.
      stats_examples: training examples the per-channel mean and std are taken from.
    """

    def __init__(self, data, padding: int = 4, flip: bool = True, stats_examples: int = 10_000):
        if data.task.kind != "classification" or len(data.task.input_shape) != 3:
            raise ValueError(f"augmentation is for image classification (H, W, C) data, got "
                             f"{data.task.kind} with inputs {data.task.input_shape}")
        self.data, self.padding, self.flip = data, int(padding), bool(flip)
        self.name = f"{data.name} (augmented: crop ±{self.padding}, flip {self.flip})"
        self.task = data.task
        self.examples_per_epoch = data.examples_per_epoch
        self.mean, self.std = channel_statistics(data, stats_examples)

    def _standardize(self, x) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

    def train_batch(self, seed: int, step: int, batch_size: int):
        x, y = self.data.train_batch(seed, step, batch_size)
        x = self._standardize(x)
        key = jax.random.fold_in(jax.random.key(seed), step)
        if self.flip or self.padding:
            x = np.asarray(random_crop_flip(key, jnp.asarray(x), padding=self.padding,
                                            flip=self.flip))
        return x, y

    def eval_batches(self, batch_size: int, max_batches: int | None = None):
        for x, y in self.data.eval_batches(batch_size, max_batches):
            yield self._standardize(x), y

    def probe_inputs(self, n: int) -> np.ndarray:
        return self._standardize(self.data.probe_inputs(n))
