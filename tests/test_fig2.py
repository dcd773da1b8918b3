"""Tests of isometry.experiments.fig2: the Figure 2 settings, result and record."""

import pytest

from isometry.experiments import fig2


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1e-3), "lr"), (dict(w_starts=()), "w_starts"), (dict(w_range=(1.0, -1.0)), "w_range"),
    (dict(grid_size=1), "grid_size"), (dict(max_steps=0), "max_steps"),
])
def test_bad_figure2_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fig2.Figure2Settings(**kwargs).check()


SMALL = fig2.Figure2Settings(grid_size=12, max_steps=1500, w_starts=(-1.5, 1.0))


@pytest.fixture(scope="module")
def result():
    return fig2.figure2(SMALL)


def test_result_is_made_of_the_toys_dataclasses(result):
    from isometry import toy

    assert isinstance(result.grid, toy.GradientGrid)
    assert isinstance(result.rezero, toy.Trajectory) and isinstance(result.residual, toy.Trajectory)
    assert result.rezero.steps.shape == (2,) and result.grid.log_grad_norm.shape == (12, 12)
    assert result.to_dict() == fig2.record(result)


def test_record_is_strict_json_and_the_figure_draws_its_paths(result):
    import json

    import numpy as np

    from isometry._io import json_text

    rec = fig2.record(result)
    loaded = json.loads(json_text(rec))
    assert loaded == rec  # already JSON-ready: what run() returns is what fig2.json holds
    for figure_of in (rec, loaded):
        fig = fig2.figure(figure_of)
        red = [l for l in fig.axes[0].lines if l.get_color() == "red" and len(l.get_xdata()) > 1]
        for line, path in zip(red, rec["paths"]["rezero"]):
            np.testing.assert_array_equal(line.get_xdata(), path["w"])
            np.testing.assert_array_equal(line.get_ydata(), path["alpha"])
        assert len(red) == len(rec["paths"]["rezero"]) == 2
    no_residual = fig2.figure(rec, residual=False)
    assert not [l for l in no_residual.axes[0].lines if l.get_color() == "tab:blue"]
