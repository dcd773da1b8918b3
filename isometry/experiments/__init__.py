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

import importlib
import os

from isometry.experiments._report import write_report

__all__ = ["EXPERIMENTS", "SCALES", "reproduce", "experiment"]

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


def reproduce(name: str, scale: str = "cpu", out: str = ".", *, data_dir: str | None = None,
              seed: int = 0, runs_dir: str | None = None) -> dict[str, str]:
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

    Returns:
      {"json": path, "png": path, "md": path}.
    """
    module = experiment(name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    runs = runs_dir or os.path.join(out, "runs")
    runs = os.path.join(runs, f"{EXPERIMENTS[name]}-{scale}-s{seed}")
    record = module.run(module.SETTINGS[scale], data_dir=data_dir, seed=seed, runs_dir=runs)
    record = dict(record, name=name, scale=scale)
    return write_report(out, name, record, module.figure(record), module.markdown(record))
