"""Figure 5: training loss of 32-layer fully connected nets — FC, FC+Res, FC+Norm, FC+ReZero.

Each variant (`models.FullyConnected`, Table 1 rows 1, 2, 3, 6) is trained with Adagrad
(lr 0.01, batch 100) from several seeds on CIFAR-10 when `--data-dir` holds it, else on the
synthetic Gaussian-prototype images (`isometry.data.SyntheticImages`). The curve of a variant
is the mean training loss over seeds with a ±1σ band. "Steps to threshold" is the first
logged step at which a seed's loss, averaged over the last `smooth` records, falls to the
threshold; ReZero's speed-up over a variant is the ratio of their mean steps.

Paper (§5.1): ReZero fits the training data 7–15× faster than the other variants.
"""

from __future__ import annotations

import dataclasses
import math
import os

import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import models
from isometry.experiments._report import fmt, markdown_table, paper_differences
from isometry.experiments._runs import first_crossing, image_data, mean_std, smooth, train_run
from isometry.experiments._sweep import final_loss, sweep_lr
from isometry.plot.axes import log_ticks, variant_style
from isometry.train import TrainConfig

LABELS = {"plain": "FC", "residual": "FC+Res", "norm": "FC+Norm", "rezero": "FC+ReZero"}
PAPER_SPEEDUP = (7.0, 15.0)
#: How `--scale paper` differs from the paper and the authors' notebook, and the choices the
#: paper leaves open (written into fig5.md).
PAPER_DIFFERENCES = (
    "As the paper: 32 layers, width 256, ReLU, Adagrad lr 0.01 (PyTorch's accumulator from 0, "
    "as the authors ran it), 5 seeds with 1σ bands, σ_w² = 2/w (0.25/w for FC+Res), batch 100 "
    "(the notebook's), 300 epochs of CIFAR-10 = 150,000 iterations, inputs scaled by "
    "(x − 0.5)/0.5 as in the notebook.",
    "The paper reports the speed-up (7–15×) without saying how it is measured; ours is the "
    "ratio of mean iterations until the smoothed training loss falls to a threshold we chose "
    "(1.0 nats at paper scale).",
    "The input layer 3072 → 256 is He-normal and linear without an activation, and the output "
    "layer 256 → 10 LeCun-normal with zero biases (the model's defaults); the notebook applies "
    "ReLU after its Kaiming input layer and keeps PyTorch's default bias and output-layer "
    "initialization (`models.FullyConnected(input_activation=True, torch_init=True)`, not used "
    "here).",
    "FC+Norm is LayerNorm after the ReLU without a residual (the notebook's); the paper only "
    "says Norm.",
    "The loss curve is the training loss of each logged batch (every 100 iterations at paper "
    "scale), not an epoch average as in the paper's plot over epochs.",
    "The notebook's post-training Jacobian numbers (final loss / mean σ² per variant) are not "
    "recomputed here.",
    "Without CIFAR-10 in `--data-dir` the run uses synthetic Gaussian-prototype images, not "
    "the paper's data.")


@dataclasses.dataclass(frozen=True)
class Fig5Settings:
    """Depth, width, variants, seeds and optimization of the Figure 5 runs."""

    depth: int = 32
    width: int = 256
    variants: tuple[str, ...] = ("plain", "residual", "norm", "rezero")
    seeds: int = 5
    steps: int = 150_000
    batch_size: int = 100
    lr: float = 0.01
    log_every: int = 10
    smooth: int = 5
    threshold: float = 1.0
    synthetic_shape: tuple[int, int, int] = (32, 32, 3)
    #: `--lr-sweep`: also train each variant at its best rate of `lr × factors` (same budget).
    sweep_factors: tuple[float, ...] = ()


SETTINGS = {
    "smoke": Fig5Settings(depth=4, width=32, seeds=1, steps=30, log_every=5, smooth=2,
                          threshold=2.1, synthetic_shape=(8, 8, 3)),
    "cpu": Fig5Settings(seeds=5, steps=600, log_every=10, smooth=3, threshold=1.0),
    # the paper's Figure 5 runs 300 epochs of CIFAR-10: 150,000 iterations at batch 100
    "paper": Fig5Settings(log_every=100),
}


def run(s: Fig5Settings, *, data_dir=None, seed: int = 0, runs_dir: str) -> dict:
    """Trains every variant from `s.seeds` seeds (seed, seed+1, …) at the shared `s.lr` and,
    with `s.sweep_factors`, once more at each variant's best rate of the sweep; returns the record."""
    data = image_data(data_dir, s.synthetic_shape)
    shared = {v: _variant_runs(s, data, v, s.lr, seed, runs_dir) for v in s.variants}
    record = {"name": "fig5", "data": data.name, "settings": dataclasses.asdict(s), "seed": seed,
              **_curves_and_outcomes(shared), "paper": {"rezero_speedup": PAPER_SPEEDUP}}
    if s.sweep_factors:
        sweeps = {v: sweep_lr(lambda lr, v=v: final_loss(
                      _train_seed(s, data, v, lr, seed, runs_dir)[1]), s.lr, s.sweep_factors)
                  for v in s.variants}
        best = {v: _variant_runs(s, data, v, sweeps[v].best_lr, seed, runs_dir)
                for v in s.variants}
        record["lr_sweep"] = {v: sw.record() for v, sw in sweeps.items()}
        record["best_lr"] = _curves_and_outcomes(best)
    return record


def _run_dir(runs_dir: str, variant: str, lr: float, seed: int, shared_lr: float) -> str:
    tag = "" if lr == shared_lr else f"-lr{lr:g}"
    return os.path.join(runs_dir, f"{variant}{tag}-seed{seed}")


def _train_seed(s: Fig5Settings, data, variant: str, lr: float, seed: int, runs_dir: str):
    """One training run (resumed/reused when its run directory is there): (steps, losses)."""
    n_in = math.prod(data.task.input_shape)
    model = models.FullyConnected(s.depth, s.width, variant=variant, in_features=n_in,
                                  out_features=data.task.num_classes, rngs=nnx.Rngs(seed))
    config = TrainConfig(steps=s.steps, batch_size=s.batch_size, optimizer="adagrad", lr=lr,
                         seed=seed, eval_batches=2, checkpoint_every=max(s.steps // 4, 1))
    records, _ = train_run(model, data, config, _run_dir(runs_dir, variant, lr, seed, s.lr),
                           input_shape=(n_in,), log_every=s.log_every,
                           run_info={"experiment": "fig5", "variant": variant,
                                     "depth": s.depth, "width": s.width, "lr": lr})
    rows = [r for r in records if "loss" in r]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def _variant_runs(s: Fig5Settings, data, variant: str, lr: float, seed: int, runs_dir: str):
    """All seeds of one variant at one rate: (curve, outcome)."""
    losses, steps, hits = [], None, []
    for k in range(s.seeds):
        run_steps, loss = _train_seed(s, data, variant, lr, seed + k, runs_dir)
        steps = run_steps if steps is None or len(run_steps) < len(steps) else steps
        losses.append(loss)
        hits.append(first_crossing(run_steps, smooth(loss, s.smooth), s.threshold))
    mean, std = mean_std(losses)
    final = [loss[-1] for loss in losses]
    reached = [h for h in hits if h is not None]
    curve = {"steps": steps[:len(mean)], "mean": mean, "std": std, "runs": losses}
    outcome = {"label": LABELS[variant], "lr": lr, "steps_to_threshold": hits,
               "reached": len(reached), "runs": s.seeds,
               "mean_steps": float(np.mean(reached)) if reached else None,
               "std_steps": float(np.std(reached)) if reached else None,
               "final_loss_mean": float(np.mean(final)), "final_loss_std": float(np.std(final))}
    return curve, outcome


def _curves_and_outcomes(runs: dict) -> dict:
    """{"curves", "outcomes"} with ReZero's speed-up over each variant in its outcome."""
    outcomes = {v: o for v, (_, o) in runs.items()}
    ref = outcomes.get("rezero", {}).get("mean_steps")
    for o in outcomes.values():
        o["rezero_speedup"] = (o["mean_steps"] / ref) if ref and o["mean_steps"] else None
    return {"curves": {v: c for v, (c, _) in runs.items()}, "outcomes": outcomes}


def figure(record: dict):
    """Mean training loss ±1σ over seeds against steps, one curve per variant (from the record);
    with a learning-rate sweep, a second panel at each variant's best rate."""
    s = record["settings"]
    panels = [("shared", record)] + ([("best_lr", record["best_lr"])] if "best_lr" in record else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (kind, block) in zip(axes[0], panels):
        for i, (variant, c) in enumerate(block["curves"].items()):
            steps, mean, std = (np.asarray(c[k], dtype=float) for k in ("steps", "mean", "std"))
            lr = block["outcomes"][variant]["lr"]
            line, = ax.plot(steps, mean, **variant_style(variant, i, len(mean)),
                            label=LABELS[variant] + (f" (lr {lr:g})" if kind == "best_lr" else ""))
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.25,
                            linewidth=0)
        ax.axhline(s["threshold"], color="0.4", linestyle=":", linewidth=1,
                   label=f"threshold {s['threshold']:g}")
        ax.set_yscale("log")
        log_ticks(ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (cross-entropy, nats)")
        which = f"Adagrad lr {s['lr']:g}" if kind == "shared" else "each at its best Adagrad lr"
        seeds = f"{s['seeds']} seed{'s' if s['seeds'] != 1 else ''}"
        ax.set_title(f"{s['depth']}-layer FC nets, width {s['width']}, {which}, "
                     f"{seeds} ({record['data']})", fontsize=9)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def markdown(record: dict) -> str:
    s, out = record["settings"], record["outcomes"]
    rows = _outcome_rows(out)
    text = [f"# Figure 5: {s['depth']}-layer fully connected nets\n",
            f"Data: **{record['data']}** ({'CIFAR-10' if record['data'] == 'cifar10' else 'synthetic Gaussian-prototype images; no CIFAR-10 copy was given'}). "
            f"Width {s['width']}, Adagrad lr {s['lr']:g} (PyTorch's, as the authors ran it: "
            f"accumulator from 0; optax's default starts it at 0.1 and steps far smaller at "
            f"small gradients), batch {s['batch_size']}, {s['steps']} "
            f"iterations, {s['seeds']} seeds. Threshold: training loss ≤ {s['threshold']:g} nats "
            f"(moving average over {s['smooth']} records of every {s['log_every']} steps).\n",
            markdown_table(["variant", "lr", "runs reaching", "iterations to threshold (mean ± sd)",
                            "final loss", "ReZero speed-up (its iterations / ReZero's)"], rows),
            f"Paper: FC+ReZero fits the training data {PAPER_SPEEDUP[0]:g}–{PAPER_SPEEDUP[1]:g}× "
            f"faster than the other variants (CIFAR-10, 32 layers, width 256).\n",
            _verdict(record)]
    if "best_lr" in record:
        text += _sweep_markdown(record)
    text.append(paper_differences(PAPER_DIFFERENCES, record.get("scale")))
    return "\n".join(text)


def _outcome_rows(out: dict) -> list[list[str]]:
    return [[o["label"], f"{o['lr']:g}", f"{o['reached']}/{o['runs']}",
             f"{fmt(o['mean_steps'])} ± {fmt(o['std_steps'])}" if o["mean_steps"] else "not reached",
             f"{fmt(o['final_loss_mean'])} ± {fmt(o['final_loss_std'])}",
             f"{o['rezero_speedup']:.2f}×" if o["rezero_speedup"] else "—"]
            for o in out.values()]


def _speedup_text(outcomes: dict, variant: str, steps: int) -> str:
    """ReZero's speed-up over `variant`; a lower bound (run length / ReZero's iterations) when
    only ReZero reached the threshold."""
    o, ref = outcomes[variant], outcomes.get("rezero", {}).get("mean_steps")
    if o["rezero_speedup"]:
        return f"{o['rezero_speedup']:.2f}×"
    if ref and not o["mean_steps"]:
        return f"> {steps / ref:.1f}× (not reached in {steps})"
    return "—"


def _sweep_markdown(record: dict) -> list[str]:
    s, sweep = record["settings"], record["lr_sweep"]
    grid_rows = [[LABELS[v], ", ".join(f"{lr:g}: {fmt(x) if x is not None else 'diverged'}"
                                        for lr, x in zip(sw["grid"], sw["final_loss"])),
                  f"{sw['best_lr']:g}"] for v, sw in sweep.items()]
    best = record["best_lr"]["outcomes"]
    shared = record["outcomes"]
    speed = [[LABELS[v], _speedup_text(shared, v, s["steps"]), _speedup_text(best, v, s["steps"])]
             for v in best if v != "rezero"]
    return ["## Each variant at its own best learning rate\n",
            f"Sweep: every variant trained {s['steps']} iterations (seed {record['seed']}) at "
            f"lr {s['lr']:g} × ({', '.join(f'{f:g}' for f in s['sweep_factors'])}); the rate with "
            f"the lowest final training loss (mean of the last 3 logged losses) wins, then "
            f"{s['seeds']} seeds run at it.\n",
            markdown_table(["variant", "final training loss per lr", "best lr"], grid_rows),
            markdown_table(["variant", "best lr", "runs reaching",
                            "iterations to threshold (mean ± sd)", "final loss",
                            "ReZero speed-up"], _outcome_rows(best)),
            markdown_table(["ReZero's speed-up over", "at the shared lr", "each at its best lr"],
                           speed),
            _verdict({**record, **record["best_lr"]}, fair=True)]


def _verdict(record: dict, fair: bool = False) -> str:
    out = record["outcomes"]
    reached = {v: o["mean_steps"] for v, o in out.items() if o["mean_steps"]}
    if not reached:
        return ("**Outcome:** no variant reached the threshold at this scale, so the speed-up "
                "cannot be measured; the claim is untested here.\n")
    fastest = min(reached.values())
    first = "rezero" if reached.get("rezero") == fastest else min(reached, key=reached.get)
    others = [v for v in out if v != "rezero"]
    speedups = {v: out[v]["rezero_speedup"] for v in others}
    never = [LABELS[v] for v in others if out[v]["mean_steps"] is None]
    parts = [f"**Outcome{' at the best learning rates' if fair else ''}:** {LABELS[first]} reaches the threshold first "
             f"(after {reached[first]:.0f} iterations on average)."]
    if "rezero" not in reached:
        parts.append("FC+ReZero never reached it: the paper's claim does **not** hold at this scale.")
    else:
        measured = {LABELS[v]: x for v, x in speedups.items() if x}
        if measured:
            parts.append("ReZero's speed-up: " + ", ".join(f"{k} {x:.2f}×" for k, x in measured.items()) + ".")
        if never:
            parts.append(f"{', '.join(never)} did not reach the threshold within "
                         f"{record['settings']['steps']} iterations (speed-up larger than "
                         f"the run can measure).")
        bound = record["settings"]["steps"] / reached["rezero"]
        ok = first == "rezero" and all(x is None or x >= PAPER_SPEEDUP[0] for x in speedups.values())
        if ok and never and bound < PAPER_SPEEDUP[0]:
            parts.append(f"ReZero is fastest; for the variants that never got there the speed-up "
                         f"is only known to exceed {bound:.1f}× (run length / ReZero's "
                         f"iterations), so the direction of the paper's claim holds and its "
                         f"7–15× size is neither confirmed nor refuted here.")
        elif ok and never:
            parts.append(f"For the variants that never got there the speed-up is only known to "
                         f"exceed {bound:.1f}× (run length / ReZero's iterations): at least the "
                         f"paper's lower end of 7×, so the claim holds here; whether it stays "
                         f"under 15× this run cannot tell.")
        elif ok:
            parts.append("This matches the paper's 7–15× claim.")
        elif first == "rezero":
            parts.append("ReZero is fastest, but by less than the paper's 7× for some variants: "
                         "the claim holds only in direction at this scale.")
        else:
            parts.append(f"ReZero is not the fastest here: the paper's claim does **not** hold at "
                         f"this scale.")
    if record["data"] != "cifar10":
        parts.append("Differences from the paper may come from the data (a synthetic task, "
                     "not CIFAR-10), fewer iterations and seeds, and the chosen threshold.")
    return " ".join(parts) + "\n"
