"""Matplotlib figures: data in, figures out. Each function takes arrays, records or result
objects (through their public attributes) and returns a `matplotlib.figure.Figure`; none
computes an experiment. `save(fig, path)` writes a figure atomically, `write_report` a figure
beside its JSON document.

Modules, one concept each: `output` (backend, `save`, `write_report`), `spectra` (log10 σ
histograms, Figure 4 style), `toy` (Figure 2 and learning rate versus depth), `training` (a
run's records: Figures 4b–d, 8), `theory` (measured against predicted densities), `layerwise`
(profiles over depth), `diagnosis` (`isometry.diagnose`'s figures), `axes` (what the figures
share: labelled log axes, whole-number step ticks, a line style per variant with ReZero on
top). Every figure function is importable as `isometry.plot.<name>`.
"""

from isometry.plot.output import save, write_report
from isometry.plot.spectra import spectrum_histograms
from isometry.plot.toy import toy_depth_sweep, toy_figure2
from isometry.plot.training import alpha_heatmap, chi_curve, spectrum_heatmap, training_curves
from isometry.plot.theory import theory_overlay
from isometry.plot.layerwise import layerwise_profiles
from isometry.plot.diagnosis import diagnosis_figure, run_diagnosis_figure

__all__ = ["save", "write_report", "spectrum_histograms", "toy_figure2", "toy_depth_sweep",
           "training_curves", "spectrum_heatmap", "alpha_heatmap", "chi_curve", "theory_overlay",
           "layerwise_profiles", "diagnosis_figure", "run_diagnosis_figure"]
