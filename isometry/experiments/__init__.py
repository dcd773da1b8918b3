"""The paper's experiments, one module each: `isometry reproduce NAME --scale smoke|cpu|paper`.

Every module has `SETTINGS` ({"smoke", "cpu", "paper"} → a frozen settings dataclass),
`run(settings, *, data_dir, seed, runs_dir) -> record` (a JSON-ready dict: settings, raw
results, derived numbers), `figure(record)` and `markdown(record)`, both drawn from the record
alone, so NAME.png shows the numbers NAME.json holds.

    from isometry.experiments import reproduce
    paths = reproduce("fig5", scale="cpu", out="docs/reproduce")

Scales: "smoke" finishes in seconds (the tests run it), "cpu" in under 15 minutes on two CPU
cores, "paper" uses the paper's settings (meant for a GPU).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Sequence

from isometry.plot.output import write_report

__all__ = ["EXPERIMENTS", "SCALES", "reproduce", "experiment", "sweepable"]

#: NAME → module (table3 is the table of the fig7 runs).
EXPERIMENTS = {"fig2": "fig2", "fig4": "fig4", "fig5": "fig5", "fig7": "fig7", "fig8": "fig8",
               "table2": "table2", "table3": "fig7", "depth": "depth"}
SCALES = ("smoke", "cpu", "paper")


def experiment(name: str):
    """The module that reproduces `name` (one of `EXPERIMENTS`).

    Imported by name when asked for, on purpose: `isometry reproduce NAME` starts without
    loading the other experiments' dependencies (the theory's scipy, the toy's grids).
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"isometry.experiments.{EXPERIMENTS[name]}")


def sweepable() -> tuple[str, ...]:
    """The experiments that take `lr_sweep` (their settings have `sweep_factors`)."""
    return tuple(n for n in EXPERIMENTS if any(
        f.name == "sweep_factors"
        for f in dataclasses.fields(experiment(n).SETTINGS["smoke"])))


def reproduce(name: str, scale: str = "cpu", out: str = ".", *, data_dir: str | None = None,
              seed: int = 0, runs_dir: str | None = None,
              lr_sweep: Sequence[float] | None = None) -> dict[str, str]:
    """Runs experiment `name` at `scale` and writes out/NAME.{png,json,md}.

    Args:
      name: "fig2", "fig4", "fig5", "fig7", "fig8", "table2", "table3" or "depth".
      scale: "smoke", "cpu" or "paper".
      out: output folder.
      data_dir: folder holding cifar-10-python.tar.gz (or cifar-10-batches-py/) and/or enwik8
        (or enwik8.zip); without them the synthetic images / a local text are used.
      seed: first seed of the runs.
      runs_dir: where training runs keep their run directories (default: out/runs/NAME-SCALE-sSEED);
        an existing finished run with the same settings is reused.
      lr_sweep: factors of the shared learning rate (e.g. `_sweep.DEFAULT_FACTORS`): each
        variant is also trained at its best rate of that grid (same budget for all, chosen by
        the final training loss), and the speed-ups are reported at both. Only for the
        experiments whose settings have `sweep_factors`.

    Returns:
      {"json": path, "png": path, "md": path}.
    """
    module = experiment(name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    settings = module.SETTINGS[scale]
    if lr_sweep is not None:
        if not any(f.name == "sweep_factors" for f in dataclasses.fields(settings)):
            raise ValueError(f"{name} has no learning-rate sweep; --lr-sweep works with "
                             f"{', '.join(sweepable())}")
        settings = dataclasses.replace(settings, sweep_factors=tuple(float(f) for f in lr_sweep))
    runs = runs_dir or os.path.join(out, "runs")
    runs = os.path.join(runs, f"{EXPERIMENTS[name]}-{scale}-s{seed}")
    record = module.run(settings, data_dir=data_dir, seed=seed, runs_dir=runs)
    record = dict(record, name=name, scale=scale)
    return write_report(out, name, record, module.figure(record), module.markdown(record))
