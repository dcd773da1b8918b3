"""Tests of isometry.plot.toy: the toy's figures are drawn from plain arrays and records."""

import numpy as np

from isometry import plot


def test_toy_figure2_from_arrays():
    w, alpha = np.linspace(-2, 2, 9), np.linspace(-1, 1, 7)
    z = np.log(1.0 + np.add.outer(alpha ** 2, w ** 2))
    z[3, 4] = -np.inf  # a vanishing gradient is drawn at the lowest level, not dropped
    path = (np.array([1.0, 1.0, 0.9]), np.array([0.0, 0.5, 1.2]))
    fig = plot.toy_figure2(w, alpha, z, {"rezero": [path]}, solution_product=1.1867, depth=5,
                           target=50.0, lr=5e-6)
    ax = fig.axes[0]
    drawn = [l for l in ax.lines if len(l.get_xdata()) == 3]
    np.testing.assert_array_equal(drawn[0].get_xdata(), path[0])
    np.testing.assert_array_equal(drawn[0].get_ydata(), path[1])
    assert "L = 5" in ax.get_title() and ax.get_xlim() == (-2.0, 2.0)


def test_toy_depth_sweep_from_a_record_with_nulls():
    toy = dict(lr_max=[1e-3, 1e-5, None], fastest_steps=[40, None, None],
               scaling=dict(depths_used=[2, 3], better=None))
    record = dict(depths=[2, 3, 4], setup=dict(max_steps=100, target=50.0, w0=1.0, tol=1e-8),
                  residual=dict(toy, stability_bound=[2e-3, 2e-5, 2e-7]), rezero=toy)
    fig = plot.toy_depth_sweep(record)
    left, right = fig.axes
    lr_line = left.lines[0]
    np.testing.assert_array_equal(lr_line.get_xdata(), [2, 3, 4])
    assert np.isnan(lr_line.get_ydata()[2])
    missed = [l for l in right.lines if l.get_marker() == "x"]
    assert missed and np.all(missed[0].get_ydata() == 100)  # marked at the budget
