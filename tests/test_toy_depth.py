"""Tests of isometry.experiments.toy_depth: learning rate versus depth on the toy (float64)."""

import numpy as np

from isometry.experiments import toy_depth


def test_depth_sweep_records_and_scaling():
    settings = toy_depth.DepthSweepSettings(depths=(2, 3, 12), max_steps=20_000, grid_points=21,
                                      iterations=10, lr_range=(1e-11, 1e-1))
    sweep = toy_depth.depth_sweep(settings)
    record = sweep.to_dict()
    assert record["depths"] == [2, 3, 12]
    rezero, residual = record["rezero"], record["residual"]
    assert all(v is not None for v in rezero["lr_max"] + residual["lr_max"])
    # Residual α = 1 from w = 1: the output starts at 2^L x_0 and the rate collapses with depth
    # (measured: by ~4e-6 from L = 2 to 12); ReZero's falls by a polynomial factor (~1.6e-2).
    assert residual["lr_max"][0] > rezero["lr_max"][0]
    residual_drop = residual["lr_max"][2] / residual["lr_max"][0]
    rezero_drop = rezero["lr_max"][2] / rezero["lr_max"][0]
    assert residual_drop < 1e-2 * rezero_drop and rezero_drop > (2 / 12) ** 3
    # At small depth the residual search lands on the exact bound (see the test above).
    assert residual["lr_max"][0] <= residual["stability_bound"][0] < 1.01 * residual["lr_max"][0]
    for name in ("residual", "rezero"):
        lr, fails = np.array(record[name]["lr_max"], float), np.array(record[name]["lr_fails"], float)
        ok = np.isfinite(lr)
        assert np.all(lr[ok] < fails[ok])
    fit = sweep.scaling("rezero")
    assert fit["better"] in ("exponential", "power_law") and fit["depths_used"] == [2, 3, 12]
