"""BatchNorm calibration (`isometry.calibrate`): running statistics from a batch of data."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import isometry as iso
import models
from isometry.calibrate import batchnorm_calibration, calibrate_batchnorm, has_batchnorm

F64 = jnp.float64


def _net(variant="residual"):
    net = models.ResNet(variant=variant, stages=(3,), width=4, param_dtype=F64, rngs=nnx.Rngs(0))
    net.eval()
    return net


def test_calibrated_statistics_are_the_batch_statistics_layer_after_layer():
    net = _net()
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(1), (16, 6, 6, 3), F64)
    calibrated = jax.jit(batchnorm_calibration(net, x))(nnx.state(net))
    stem = net.stem(x)
    np.testing.assert_allclose(calibrated["stem_norm"]["mean"][...], stem.mean(axis=(0, 1, 2)),
                               rtol=1e-10)
    np.testing.assert_allclose(calibrated["stem_norm"]["var"][...], stem.var(axis=(0, 1, 2)),
                               rtol=1e-10)
    # the scanned blocks: one row of statistics per layer, each from its own input
    stacked = calibrated["blocks"][1]["layers"]["bn1"]["mean"][...]
    assert stacked.shape == (2, 4) and not np.allclose(stacked[0], stacked[1])
    assert np.all(net.stem_norm.mean[...] == 0), "the model itself is not changed"
    # in eval mode with calibrated statistics, BatchNorm standardizes the stem's output
    calibrate_batchnorm(net, x)
    h = net.stem_norm(net.stem(x))
    np.testing.assert_allclose(h.mean(axis=(0, 1, 2)), net.stem_norm.bias[...], atol=1e-8)


def test_calibration_changes_the_spectrum_of_a_batchnorm_net_at_init_and_nothing_else():
    net = _net()
    # inputs far from N(0, 1): the initial statistics (0, 1) are far from the data's
    x = 1.0 + 4.0 * jax.random.normal(jax.random.key(2), (8, 6, 6, 3), F64)
    apply_fn, state = iso.from_nnx(net)
    sfn = iso.spectrum_fn(apply_fn, "dense")
    before = float(sfn(state, x[0]).chi)
    after = float(sfn(batchnorm_calibration(net, x)(state), x[0]).chi)
    assert np.isfinite(before) and np.isfinite(after) and abs(np.log(after / before)) > 1.0
    fixup = _net("fixup")
    assert not has_batchnorm(fixup)
    same = batchnorm_calibration(fixup, x)(nnx.state(fixup))
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(nnx.state(fixup))):
        np.testing.assert_array_equal(a, b)
