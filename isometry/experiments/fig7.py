"""Figure 7 and Table 3: character-level Transformer language models with the LayerNorm
placements of §5.3 and with ReZero.

12 layers: Post-Norm (without and with learning-rate warm-up), Pre-Norm, GPT2-Norm and ReZero
with α = 0 and α = 1 (`models.Transformer`, causal, bytes as tokens) are trained with Adam on
enwik8 when `--data-dir` holds it, else on the Python standard library's source (a local text,
`_runs.text_corpus`). Bits per byte (BPB) = training cross-entropy / ln 2, averaged over the
last `smooth` records; "iterations to threshold" is the first step at which it falls to
`threshold_bpb`, and ReZero's speed-up is (Post-Norm + warm-up's iterations) / (ReZero α = 0's) − 1
(the paper: 56% faster). Deep models (`deep_depth` layers) are trained briefly: a run fails
when its loss turns non-finite or its final BPB is no better than the byte-frequency (unigram)
entropy of the training text, i.e. it learnt nothing beyond byte counts.

Paper (§5.3, Table 3): 12 layers — Post-Norm without warm-up diverges, with 100 warm-up steps it
reaches 1.2 BPB in 13,690 iterations, ReZero α = 0 converges 56% faster, α = 1 gives no gain.
64 layers — Post-Norm, Post-Norm + warm-up and ReZero α = 1 diverge; ReZero α = 0 reaches 1.11.
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
from isometry.experiments._runs import (CharLMSettings, first_crossing, language_data, smooth,
                                        train_run)
from isometry.experiments._sweep import final_loss, sweep_lr
from isometry.plot.axes import integer_ticks, spike_top, variant_style
from isometry.train import TrainConfig

#: label → (variant, alpha_init, warm-up on?)
VARIANTS = {"Post-Norm": ("postnorm", 0.0, False),
            "Post-Norm + warm-up": ("postnorm", 0.0, True),
            "Pre-Norm": ("prenorm", 0.0, False),
            "GPT2-Norm": ("gpt2norm", 0.0, False),
            "ReZero α=1": ("rezero", 1.0, False),
            "ReZero α=0": ("rezero", 0.0, False)}
DEEP_VARIANTS = ("Post-Norm", "Post-Norm + warm-up", "ReZero α=1", "ReZero α=0")
REFERENCE, REZERO = "Post-Norm + warm-up", "ReZero α=0"
PAPER = {"threshold_bpb": 1.2, "reference_iterations": 13_690, "rezero_speedup": 0.56,
         "deep_depth": 64,
         "deep_outcome": {"Post-Norm": "diverges", "Post-Norm + warm-up": "diverges",
                          "ReZero α=1": "diverges", "ReZero α=0": "1.11 BPB"}}
#: How `--scale paper` differs from the paper and the authors' notebooks, and the choices the
#: paper leaves open (written into fig7.md / table3.md).
PAPER_DIFFERENCES = (
    "As the paper: 12 layers (Post-Norm with and without 100 warm-up steps, Pre-Norm, "
    "GPT2-Norm, ReZero α = 0 and α = 1) and 64 layers (Post-Norm, + warm-up, ReZero α = 1 and "
    "α = 0); threshold 1.2 BPB; ReZero's α shared by the attention and feed-forward sublayers "
    "of a layer and no LayerNorm; bytes of enwik8 as tokens when `--data-dir` holds it.",
    "Model width: d_model 512, 8 heads, FFN 2048 at 12 layers (about 38M parameters, Table 3's "
    "38M for TX + warm-up) and d_model 256, FFN 1024 at 64 layers (about 51M, Table 3's 51M); "
    "the widths are inferred from Table 3's parameter counts, since the paper's appendix with "
    "its hyperparameters is not in our copy.",
    "Optimizer, learning rate, batch, sequence length and gradient clipping (Adam lr 1e-3, "
    "batch 16 × 512 bytes, clip 0.5) are our choice: the paper's enwik8 settings are in its "
    "appendix, not in our copy; the authors' WikiText-2 notebooks use Adagrad lr 0.01 with "
    "StepLR γ 0.9, batch 50, bptt 35, clip 0.5 and dropout 0.1 (dropout 0 here).",
    "Length: 20,000 iterations at 12 layers (the paper's reference reaches 1.2 BPB in 13,690) "
    "and 40,000 at 64 layers, twice the 12-layer budget for the paper's 1.11 BPB; the paper "
    "does not state how long its runs were.",
    "BPB here is the training cross-entropy / ln 2 (moving average over 5 records of every 50 "
    "iterations), plus a held-out BPB on 4 batches; the paper's Table 3 is on the enwik8 test "
    "set. A deep run fails when its loss turns non-finite or it ends no better than the "
    "byte-frequency entropy (our criterion for the paper's \"diverged\").",
    "The 128-layer ReZero Transformer (1.08 BPB) is in `isometry reproduce depth`; the "
    "Character Transformer rows of Table 3 are not reproduced.",
    "One seed per variant. Without enwik8 the text is the Python standard library's source.")


@dataclasses.dataclass(frozen=True)
class Fig7Settings(CharLMSettings):
    """Model size, optimization and thresholds of the Figure 7 / Table 3 runs."""

    deep_depth: int = 64
    deep_steps: int = 40_000
    #: width of the deep models (None: `d_model` / `ffn`)
    deep_d_model: int | None = 256
    deep_ffn: int | None = 1024
    warmup: int = 100
    smooth: int = 5
    threshold_bpb: float = 1.2
    variants: tuple[str, ...] = tuple(VARIANTS)
    deep_variants: tuple[str, ...] = DEEP_VARIANTS
    #: `--lr-sweep`: also train each 12-layer variant at its best rate of `lr × factors`.
    sweep_factors: tuple[float, ...] = ()


SETTINGS = {
    "smoke": Fig7Settings(depth=2, deep_depth=4, d_model=16, heads=2, ffn=32, seq_len=16,
                          batch_size=8, steps=12, deep_steps=4, lr=3e-3, warmup=4, log_every=2,
                          smooth=2, threshold_bpb=7.0, text_bytes=60_000,
                          variants=("Post-Norm + warm-up", "ReZero α=0"),
                          deep_variants=("Post-Norm",), deep_d_model=None, deep_ffn=None),
    "cpu": Fig7Settings(depth=12, deep_depth=64, d_model=64, heads=4, ffn=256, seq_len=64,
                        batch_size=16, steps=400, deep_steps=40, lr=1e-3, warmup=40,
                        log_every=10, smooth=3, threshold_bpb=3.3, text_bytes=2_000_000,
                        deep_d_model=None, deep_ffn=None),
    "paper": Fig7Settings(),
}


def unigram_bpb(tokens: np.ndarray) -> float:
    """Entropy in bits of the byte frequencies: the BPB of a model that ignores context."""
    p = np.bincount(np.asarray(tokens, np.int64), minlength=256) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def deep_settings(s: Fig7Settings) -> Fig7Settings:
    """`s` with the deep models' width (`deep_d_model`, `deep_ffn`) as its `d_model`, `ffn`."""
    return dataclasses.replace(s, d_model=s.deep_d_model or s.d_model, ffn=s.deep_ffn or s.ffn)


def train_lm(s: Fig7Settings, data, label: str, depth: int, steps: int, seed: int,
             runs_dir: str, lr: float | None = None) -> dict:
    """Trains the `label` variant (`VARIANTS`) at `depth` for `steps` with the sizes of `s`
    and Adam rate `lr` (default `s.lr`; reused when its run directory holds the run); returns
    its curve and outcome."""
    lr = s.lr if lr is None else lr
    variant, alpha_init, warm = VARIANTS[label]
    model = models.Transformer(depth, s.d_model, heads=s.heads, ffn=s.ffn, variant=variant,
                               alpha_init=alpha_init, vocab_size=256, causal=True,
                               rngs=nnx.Rngs(seed))
    warmup = min(s.warmup, steps - 1) if warm else 0
    config = TrainConfig(steps=steps, batch_size=s.batch_size, optimizer="adam", lr=lr,
                         warmup=warmup, clip=s.clip, seed=seed, eval_batches=4,
                         checkpoint_every=max(steps // 4, 1))
    slug = f"L{depth}-{variant}-a{alpha_init:g}-w{warmup}"
    if depth == s.deep_depth and s.deep_d_model:  # the deep models' own width
        slug += f"-d{s.d_model}"
    if lr != s.lr:  # a rate of the sweep
        slug += f"-lr{lr:g}"
    records, result = train_run(model, data, config, os.path.join(runs_dir, slug),
                                log_every=s.log_every,
                                run_info={"experiment": "fig7", "label": label, "depth": depth,
                                          "d_model": s.d_model})
    rows = [r for r in records if "loss" in r]
    steps_ = [r["step"] for r in rows]
    bpb = [r["loss"] / math.log(2) if r["loss"] is not None else math.nan for r in rows]
    smoothed = smooth(bpb, s.smooth)
    return {"variant": variant, "alpha_init": alpha_init, "warmup": warmup, "lr": lr,
            "steps": steps_,
            "bpb": bpb, "bpb_smoothed": smoothed,
            "final_bpb": float(smoothed[-1]) if len(smoothed) else None,
            "eval_bpb": result.final.get("eval_bpb"),
            "nonfinite": bool(result.diverged),
            "iterations_to_threshold": first_crossing(steps_, smoothed, s.threshold_bpb)}


def run(s: Fig7Settings, *, data_dir=None, seed: int = 0, runs_dir: str) -> dict:
    """Trains the shallow and the deep variants; returns the JSON record."""
    data = language_data(data_dir, s.seq_len, s.text_bytes)
    floor = unigram_bpb(data.train)
    shallow = {label: train_lm(s, data, label, s.depth, s.steps, seed, runs_dir)
               for label in s.variants}
    deep = {}
    for label in s.deep_variants:
        r = train_lm(deep_settings(s), data, label, s.deep_depth, s.deep_steps, seed, runs_dir)
        r["failed"] = r["nonfinite"] or not (r["final_bpb"] is not None and r["final_bpb"] < floor)
        deep[label] = r
    record = {"name": "fig7", "data": data.name, "settings": dataclasses.asdict(s), "seed": seed,
              "unigram_bpb": floor, "shallow": shallow, "deep": deep,
              "rezero_speedup": _rezero_speedup(shallow), "paper": PAPER}
    if s.sweep_factors:
        sweeps = {label: sweep_lr(lambda lr, label=label: final_loss(train_lm(
                      s, data, label, s.depth, s.steps, seed, runs_dir, lr=lr)["bpb"]),
                      s.lr, s.sweep_factors) for label in s.variants}
        best = {label: train_lm(s, data, label, s.depth, s.steps, seed, runs_dir,
                                lr=sweeps[label].best_lr) for label in s.variants}
        record["lr_sweep"] = {label: sw.record() for label, sw in sweeps.items()}
        record["best_lr"] = {"shallow": best, "rezero_speedup": _rezero_speedup(best)}
    return record


def _iterations(shallow: dict) -> tuple[int | None, int | None]:
    """Iterations to the threshold of the reference and of ReZero α = 0 (None: not reached)."""
    return tuple(shallow.get(label, {}).get("iterations_to_threshold")
                 for label in (REFERENCE, REZERO))


def _rezero_speedup(shallow: dict) -> float | None:
    """(iterations of the reference) / (ReZero α = 0's) − 1, None unless both got there."""
    ref, rz = _iterations(shallow)
    return (ref / rz - 1.0) if ref and rz else None


def figure(record: dict):
    """BPB against iterations: the shallow models (left), with a learning-rate sweep the
    shallow models each at its best rate (middle), and the deep ones (right)."""
    s = record["settings"]
    panels = [(record["shallow"], s["depth"], "")]
    if "best_lr" in record:
        panels.append((record["best_lr"]["shallow"], s["depth"], ", each at its best Adam lr"))
    panels.append((record["deep"], s["deep_depth"], ""))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.0), squeeze=False)
    for ax, (runs, depth, which) in zip(axes[0], panels):
        lowest, curves = record["unigram_bpb"], []
        for i, (label, r) in enumerate(runs.items()):
            y = np.asarray([np.nan if v is None else v for v in r["bpb_smoothed"]], dtype=float)
            lowest = min(lowest, np.nanmin(y, initial=lowest))
            curves.append(y)
            rate = f" (lr {r['lr']:g})" if which else ""
            ax.plot(r["steps"], y, **variant_style(label, i, len(y)),
                    label=label + rate + (" (non-finite loss)" if r["nonfinite"] else ""))
        # early BPB far above the byte entropy (e.g. ReZero α = 1) would flatten the rest
        ax.set_ylim(0.9 * lowest,
                    min(ax.get_ylim()[1], spike_top(curves, 1.6 * record["unigram_bpb"])))
        integer_ticks(ax.xaxis)
        ax.axhline(record["unigram_bpb"], color="0.6", linestyle="--", linewidth=0.8,
                   label="byte-frequency entropy")
        if depth == s["depth"]:
            ax.axhline(s["threshold_bpb"], color="k", linestyle=":", linewidth=1,
                       label=f"threshold {s['threshold_bpb']:g} BPB")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training bits per byte")
        ax.set_title(f"{depth}-layer character Transformers{which} ({record['data']})", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def markdown(record: dict) -> str:
    s, shallow, deep = record["settings"], record["shallow"], record["deep"]
    deep_rows = [[label, "fails" if r["failed"] else "trains", r["final_bpb"], r["eval_bpb"],
                  PAPER["deep_outcome"].get(label, "—")] for label, r in deep.items()]
    data = ("enwik8" if record["data"] == "enwik8" else
            "a local text (the Python standard library's source; no enwik8 was given)")
    text = [f"# Figure 7 / Table 3: character-level Transformers\n",
            f"Data: **{record['data']}** — {data}. d_model {s['d_model']}, {s['heads']} heads, "
            f"FFN {s['ffn']}, sequence {s['seq_len']}, batch {s['batch_size']}, Adam lr "
            f"{s['lr']:g}, gradient clip {s['clip']}, warm-up {s['warmup']} steps (warm-up runs "
            f"only). Threshold: training BPB ≤ {s['threshold_bpb']:g} (moving average over "
            f"{s['smooth']} records of every {s['log_every']} steps). Byte-frequency entropy of the "
            f"training text: {record['unigram_bpb']:.3f} bits.\n",
            f"## {s['depth']} layers, {s['steps']} iterations\n",
            _shallow_table(shallow, s["steps"], s["lr"]),
            f"Paper: {REFERENCE} reaches {PAPER['threshold_bpb']} BPB in "
            f"{PAPER['reference_iterations']:,} iterations; ReZero α = 0 converges 56% faster "
            f"(1.56×); Post-Norm without warm-up diverges; ReZero α = 1 gives no gain.\n",
            f"## {s['deep_depth']} layers, {s['deep_steps']} iterations"
            + (f" (d_model {s['deep_d_model']}, FFN {s.get('deep_ffn') or s['ffn']})"
               if s.get("deep_d_model") else "") + "\n",
            markdown_table(["variant", "outcome here", "final training BPB", "held-out BPB",
                            "paper (64 layers)"], deep_rows),
            "A deep run *fails* when its loss turns non-finite or its final BPB is no better than "
            "the byte-frequency entropy.\n",
            _verdict(record)]
    if "best_lr" in record:
        text += _sweep_markdown(record)
    text.append(paper_differences(PAPER_DIFFERENCES, record.get("scale")))
    return "\n".join(text)


def _shallow_table(shallow: dict, steps: int, lr: float) -> str:
    ref = shallow.get(REFERENCE, {}).get("iterations_to_threshold")
    rows = []
    for label, r in shallow.items():
        it = r["iterations_to_threshold"]
        rows.append([label, f"{r.get('lr', lr):g}", it if it is not None else "not reached",
                     _speed(ref, it, steps), r["final_bpb"], r["eval_bpb"],
                     "yes" if r["nonfinite"] else "no"])
    return markdown_table(["variant", "Adam lr", "iterations to threshold",
                           f"speed vs {REFERENCE} (its iterations / these)", "final training BPB",
                           "held-out BPB", "non-finite loss"], rows)


def _sweep_markdown(record: dict) -> list[str]:
    s, best = record["settings"], record["best_lr"]
    rows = [[label, ", ".join(f"{lr:g}: {x:.3g}" if x is not None
                              else f"{lr:g}: diverged" for lr, x in zip(sw["grid"], sw["final_loss"])),
             f"{sw['best_lr']:g}"] for label, sw in record["lr_sweep"].items()]
    speed = [_speedup_cell(record["shallow"], s["steps"]), _speedup_cell(best["shallow"], s["steps"])]
    return [f"## {s['depth']} layers, each variant at its own best learning rate\n",
            f"Sweep: every {s['depth']}-layer variant trained {s['steps']} iterations at Adam lr "
            f"{s['lr']:g} × ({', '.join(f'{f:g}' for f in s['sweep_factors'])}); the rate with "
            f"the lowest final training loss (mean of the last 3 logged losses, shown in BPB) "
            f"wins. The deep runs keep the shared rate.\n",
            markdown_table(["variant", "final training BPB per lr", "best lr"], rows),
            _shallow_table(best["shallow"], s["steps"], s["lr"]),
            markdown_table([f"ReZero α = 0 against {REFERENCE}", "at the shared lr",
                            "each at its best lr", "paper"], [["speed-up"] + speed + ["+56%"]])]


def _speedup_cell(shallow: dict, steps: int) -> str:
    """ReZero α = 0's speed-up over the reference: "+X% (Y×)", or its lower bound when only
    ReZero reached the threshold, "—" when ReZero did not."""
    gain = _rezero_speedup(shallow)
    if gain is not None:
        return f"{gain:+.0%} ({gain + 1.0:.2f}×)"
    return _speed(*_iterations(shallow), steps)


def _speed(ref: int | None, it: int | None, steps: int) -> str:
    """Reference's iterations / these; a lower bound when the reference never got there."""
    if it is None:
        return "—"
    return f"{ref / it:.2f}×" if ref else f"> {steps / it:.2f}× (reference not reached)"


def _verdict(record: dict) -> str:
    shallow = record["shallow"]
    reached = {k: r["iterations_to_threshold"] for k, r in shallow.items()
               if r["iterations_to_threshold"] is not None}
    parts = []
    if not reached:
        parts.append("**Outcome:** no 12-layer variant reached the threshold, so the speed-up "
                     "is not measured at this scale.")
    else:
        best = min(reached.values())
        first = [k for k, it in reached.items() if it == best]
        verb = "reaches" if len(first) == 1 else "reach"
        names = ", ".join(first[:-1]) + " and " + first[-1] if len(first) > 1 else first[0]
        parts.append(f"**Outcome:** {names} {verb} "
                     f"{record['settings']['threshold_bpb']:g} BPB first ({best} iterations; "
                     f"resolution {record['settings']['log_every']} iterations).")
        sp = record["rezero_speedup"]
        if sp is not None:
            verb = "holds" if sp > 0 else "does **not** hold"
            parts.append(f"ReZero α = 0 needs {reached[REZERO]} iterations against "
                         f"{reached[REFERENCE]} for {REFERENCE}: {sp * 100:+.0f}% speed "
                         f"(paper +56%), so the claim that ReZero converges faster {verb} here.")
        elif REZERO in shallow and REZERO not in reached:
            parts.append("ReZero α = 0 did not reach the threshold: the paper's claim does "
                         "**not** hold at this scale.")
        elif REFERENCE in shallow and REFERENCE not in reached:
            steps = record["settings"]["steps"]
            parts.append(f"{REFERENCE} did not reach the threshold in {steps} iterations, so "
                         f"ReZero α = 0 is at least {steps / reached[REZERO]:.2f}× as fast "
                         f"(paper 1.56×): the claim that it converges faster holds here, by a "
                         f"margin this run can only bound.")
        others = {k: it for k, it in reached.items() if k not in (REZERO, REFERENCE)}
        if REZERO in reached and others:
            faster = [k for k, it in others.items() if it < reached[REZERO]]
            parts.append(f"Against the other placements ReZero α = 0 is "
                         f"{'behind ' + ', '.join(faster) if faster else 'not behind any'} "
                         f"(the paper: Pre-Norm and GPT2-Norm converge faster than Post-Norm at "
                         f"first and slower in the end).")
    deep = record["deep"]
    if deep:
        failed = [k for k, r in deep.items() if r["failed"]]
        parts.append(f"At {record['settings']['deep_depth']} layers: "
                     f"{', '.join(failed) if failed else 'no variant'} failed to train; "
                     f"{', '.join(k for k in deep if k not in failed) or 'none'} trained.")
        expected = {k for k in deep if k != REZERO}
        if set(failed) == expected:
            parts.append("This is the paper's pattern.")
        else:
            parts.append("This differs from the paper's pattern (all but ReZero α = 0 diverge).")
    parts.append("Runs here are far shorter, smaller and on other data than the paper's "
                 "(enwik8, 512-wide models, tens of thousands of iterations), so thresholds are "
                 "higher and warm-up matters less; read the numbers as a small-scale check.")
    return " ".join(parts) + "\n"
