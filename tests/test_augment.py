"""The standard CIFAR augmentation (`isometry.augment`): crops of the padded image, flips,
per-channel standardization, and batches that are a function of (seed, step)."""

import jax
import jax.numpy as jnp
import numpy as np

from isometry import data as D
from isometry.augment import Augmented, channel_statistics, random_crop_flip


def test_every_output_is_a_crop_of_the_padded_image_or_its_mirror():
    x = jax.random.normal(jax.random.key(0), (64, 6, 6, 2))
    out = np.asarray(random_crop_flip(jax.random.key(1), x, padding=2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets, flips = set(), 0
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if np.array_equal(out[i], (padded[i, dy:dy + 6, dx:dx + 6] if not f else
                                            padded[i, dy:dy + 6, dx:dx + 6][:, ::-1]))]
        assert found, f"image {i} is no crop of its padded copy"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 10          # 25 possible offsets, 64 draws
    assert 16 < flips < 48            # Binomial(64, 1/2): mean 32, sd 4
    same = random_crop_flip(jax.random.key(1), x, padding=2)
    np.testing.assert_array_equal(out, same)
    np.testing.assert_array_equal(random_crop_flip(jax.random.key(1), x, padding=0, flip=False), x)


def test_augmented_data_standardizes_and_is_a_function_of_seed_and_step():
    base = D.load_data("synthetic:8x8x3")
    aug = Augmented(base, padding=1)
    mean, std = channel_statistics(base)
    assert mean.shape == std.shape == (3,) and np.all(std > 0)
    x, y = aug.train_batch(3, 7, 16)
    x2, y2 = aug.train_batch(3, 7, 16)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, aug.train_batch(3, 8, 16)[0])
    ex, _ = next(aug.eval_batches(512, 1))
    raw, _ = next(base.eval_batches(512, 1))
    np.testing.assert_allclose(ex, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(float(ex.mean())) < 0.1 and abs(float(ex.std()) - 1) < 0.1
