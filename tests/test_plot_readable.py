"""Figures a reader can use (issue #31): a diverged run is plotted and marked, log axes carry
labels across their range, and ReZero's curve is never hidden under the others."""

import os

import numpy as np
import pytest

from isometry import plot
from isometry.cli import main
from isometry.experiments import depth
from isometry.train._tracking import read_metrics

FIGURES = ("loss.png", "spectra.png", "alpha.png", "chi.png")


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """A 3-layer ReZero net that SGD at lr 1e6 blows up within a few steps (about 10 s)."""
    run = str(tmp_path_factory.mktemp("div") / "run")
    assert main(["train", "--model", "fc", "--variant", "rezero", "--depth", "3", "--width", "8",
                 "--data", "synthetic:2x2x3", "--batch-size", "8", "--optimizer", "sgd",
                 "--lr", "1e6", "--steps", "20", "--probes", "2", "--track-every", "1",
                 "--log-every", "1", "--no-progress", "--run-dir", run]) == 3  # 3: diverged
    return run


def _divergence_lines(fig) -> list:
    """(axes, label) of every line in `fig` that marks a divergence."""
    return [(ax, line.get_label()) for ax in fig.axes for line in ax.get_lines()
            if "non-finite at step" in str(line.get_label())]


def test_a_diverged_run_is_plotted_with_its_divergence_marked(diverged_run, tmp_path):
    records = read_metrics(diverged_run)
    bad = [r["step"] for r in records if r.get("loss_nonfinite")]
    assert bad and records[-1]["loss"] is None  # the run did diverge, stored as null
    assert any(v is None for v in records[-1]["alpha"].values())
    step = bad[0]

    out = tmp_path / "plots"
    assert main(["plot", diverged_run, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted(FIGURES)

    figures = {"loss": plot.training_curves(records),
               "spectra": plot.spectrum_heatmap(records, run_dir=diverged_run),
               "alpha": plot.alpha_heatmap(records), "chi": plot.chi_curve(records)}
    for name, fig in figures.items():
        (ax, label), = _divergence_lines(fig)
        assert label == f"loss non-finite at step {step}", name
        assert label in ax.get_legend_handles_labels()[1] and ax.get_legend(), name
        left, right = ax.get_xlim()
        assert left < step < right, name  # the mark is inside the picture
    # the α heat map draws the null α's as missing (masked), the finite ones as numbers
    mesh = figures["alpha"].axes[0].collections[0]
    values = np.ma.getmaskarray(mesh.get_array())
    assert values.any() and not values.all()


def _visible_log_labels(ax):
    ax.figure.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = ax.get_yticklabels() + ax.get_yticklabels(minor=True)
    return [(t.get_position()[1], t.get_text()) for t in ticks
            if t.get_text() and lo * (1 - 1e-9) <= t.get_position()[1] <= hi * (1 + 1e-9)]


# log10 χ from lo to hi, σ_max and σ_min a factor `spread` around √χ: a diverging run, a
# vanishing one, χ near 1 (a ReZero run: 0.7 < σ < 1.4, where no decade is in view)
@pytest.mark.parametrize("lo, hi, spread", [(-2, 6, 2), (-30, 2, 2), (-0.6, 0.6, 2), (0, 35, 2),
                                            (0, 0.05, 1.3), (-0.5, 0.5, 1)])
def test_chi_axis_is_labelled_across_its_range(lo, hi, spread):
    chi = np.logspace(lo, hi, 10)
    records = [{"step": 10 * i, "spectrum": {"chi": c, "sigma_max": spread * c ** 0.5,
                                             "sigma_min": c ** 0.5 / spread}}
               for i, c in enumerate(chi)]
    ax = plot.chi_curve(records).axes[0]
    labels = _visible_log_labels(ax)
    values = [v for v, _ in labels]
    top, bottom = ax.get_ylim()[1], ax.get_ylim()[0]
    assert len(labels) >= 3 and all(text.strip() for _, text in labels)
    assert max(values) > 1  # the old axis had nothing above 10^0
    # no stretch of more than a factor 10^6 (or a third of the axis) without a number
    span = np.log10(top / bottom)
    edges = np.log10([bottom, *sorted(values), top])
    assert np.max(np.diff(edges)) <= max(span / 3, 1.0) + 1e-9


def _depth_record(rezero_bpb):
    steps = list(range(0, 100, 10))
    chi_one = [1.0] * 9
    return {
        "settings": {"fc_depth": 8, "fc_width": 4, "fc_lr": 0.003,
                     "lm": {"depth": 4, "d_model": 16}},
        "fc": {"rezero": {"steps": steps, "loss": [2.3] * 10, "nonfinite": False,
                          "chi_init": chi_one, "chi_final": chi_one},
               "plain": {"steps": steps, "loss": [2.3] * 10, "nonfinite": False,
                         "chi_init": chi_one, "chi_final": chi_one},
               "residual": {"steps": steps, "loss": list(np.linspace(3e5, 1e5, 10)),
                            "nonfinite": False, "chi_init": list(np.logspace(0, 9, 9)),
                            "chi_final": None}},
        "lm": {"ReZero α=0": {"steps": steps, "bpb_smoothed": rezero_bpb, "nonfinite": False},
               "Post-Norm": {"steps": steps, "bpb_smoothed": [7.8] * 9 + [None],
                             "nonfinite": True}},
        "unigram_bpb": 4.7}


def test_depth_figure_keeps_rezero_on_top_and_in_view():
    # ReZero ends at 7.7 bits, above the old cut at 1.6 × 4.7 = 7.52: it used to vanish
    rezero_bpb = list(np.linspace(7.9, 7.7, 10))
    fig = depth.figure(_depth_record(rezero_bpb))
    for ax in fig.axes:
        drawn = [line for line in ax.get_lines() if len(line.get_xdata()) > 1
                 and not line.get_label().startswith("_") and "init" not in line.get_label()
                 and line.get_label() != "byte-frequency entropy"]
        top = max(drawn, key=lambda line: line.get_zorder())
        assert "ReZero" in top.get_label(), (ax.get_title(), top.get_label())
        others = [line for line in drawn if line is not top]
        assert all(line.get_zorder() < top.get_zorder() for line in others)
        # distinguishable where they coincide: its own dash pattern and marker
        assert all((line.get_linestyle(), line.get_marker()) !=
                   (top.get_linestyle(), top.get_marker()) for line in others)
    ax_lm = fig.axes[2]
    assert ax_lm.get_ylim()[1] >= rezero_bpb[-1]
    # the training losses differ by 10^5: a log axis, both FC curves off the bottom edge
    assert fig.axes[0].get_yscale() == "log"


class _Sigma:
    """The spectrum protocol `spectrum_histograms` reads: σ and their log10 histogram."""

    def __init__(self, sigma):
        self.singular_values = np.asarray(sigma, float)

    def histogram(self, bins, range=None, density=False):
        return np.histogram(np.log10(self.singular_values), bins=bins, range=range,
                            density=density)


def test_coinciding_histograms_stay_distinguishable():
    # a ReZero net at α = 0 has σ = 1 at every step: the three curves are the same
    curves = {f"step {s}": _Sigma(np.ones(16)) for s in (0, 2, 4)}
    ax = plot.spectrum_histograms({"ReZero": curves}).axes[0]
    stairs = [p for p in ax.patches if p.get_label().startswith("step")]
    assert len(stairs) == 3
    assert len({p.get_linestyle() for p in stairs}) == 3
    widths = [p.get_linewidth() for p in stairs]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # earlier: wider


def test_diagnosis_says_when_alpha_is_zero_on_its_log_axis():
    from types import SimpleNamespace

    d = SimpleNamespace(chi_profile=np.ones(5), growth_rate=0.0, phase="critical", theory=None,
                        spectrum=None, token_cosine=None, codes=[],
                        alphas={f"blocks/{i}/alpha": 0.0 for i in range(4)},
                        alpha_grads={f"blocks/{i}/alpha": 0.1 * (i + 1) for i in range(4)})
    ax = plot.diagnosis_figure(d).axes[3]
    labels = ax.get_legend_handles_labels()[1]
    assert "|α_l| (= 0 at 4 of 4 layers, not drawn)" in labels
    assert ax.get_yscale() == "log"  # the gradients are drawn although every α is 0


def test_the_library_leaves_the_matplotlib_backend_alone():
    """`iso.diagnose(...).figure()` and the plot package draw without switching the user's
    backend (a notebook's inline backend stays); checked in a fresh interpreter."""
    import subprocess
    import sys
    code = ("import matplotlib; matplotlib.use('svg'); import jax.numpy as jnp; import isometry as iso, models; "
            "from flax import nnx; from isometry import plot; "
            "net = models.FullyConnected(2, 8, rngs=nnx.Rngs(0)); "
            "iso.diagnose(net, jnp.ones(8, jnp.float32)).figure(); "
            "print(matplotlib.get_backend())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "svg"
