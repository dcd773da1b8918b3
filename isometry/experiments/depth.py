"""As deep as the paper: 10,000-layer fully connected nets and 128-layer Transformer LMs.

(a) Fully connected nets of `fc_depth` layers — ReZero (α = 0), plain and residual, Table 1
rows 6, 1 and 2 with the paper's initializations — are trained with Adagrad (lr 0.003, the
paper's footnote) to overfit a fixed training set (`_runs.FixedTrainingSet`: the first
`train_size` examples of CIFAR-10 when `--data-dir` holds it, else of the synthetic images).
For each variant the record keeps the training-loss curve, the loss on the whole fixed set
before and after, and the layer-by-layer profile χ_l = ‖∂x_l/∂x_0‖_F²/n of the stack at
initialization and after training (dense, every depth in one pass, `layerwise_spectrum_fn`).

(b) Character Transformer LMs of `lm_depth` layers — ReZero α = 0, Post-Norm with and without
warm-up, Pre-Norm — trained as in Figure 7 (`fig7.train_lm`: Adam, gradient clipping, the same
data); a run *fails* when its loss turns non-finite or its final BPB is no better than the
byte-frequency entropy of the text.

Paper (§5.1, §5.3): "ReZero successfully trains 10,000 layers of fully-connected networks";
64- and 128-layer ReZero Transformers train (128 layers: 1.08 BPB on enwik8) where Post-Norm
diverges.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.patheffects import Normal, Stroke

import models
from isometry.spectrum._layerwise import depth_profile, from_stack, layerwise_spectrum_fn
from isometry.experiments import fig7
from isometry.experiments._report import fmt, markdown_table, paper_differences
from isometry.experiments._runs import FixedTrainingSet, image_data, language_data, train_run
from isometry.plot.axes import integer_ticks, log_ticks, spike_top, variant_style
from isometry.train import TrainConfig

FC_LABELS = {"rezero": "FC+ReZero (α = 0)", "plain": "FC", "residual": "FC+Res"}
LM_LABELS = ("ReZero α=0", "Post-Norm", "Post-Norm + warm-up", "Pre-Norm")
PAPER = {"fc_depth": 10_000, "fc_lr": 0.003, "fc_width": 150, "lm_depth": 128,
         "lm_rezero_bpb": 1.08}
#: How `--scale paper` differs from the paper and the authors' notebook, and the choices the
#: paper leaves open (written into depth.md).
PAPER_DIFFERENCES = (
    "(a) As the paper and the authors' notebook: 10,000 layers, width 150, ReLU, Adagrad lr "
    "0.003 (PyTorch's accumulator from 0), batch 100, 25 epochs of the 50,000 CIFAR-10 "
    "training images = 12,500 iterations; σ_w² = 2/w (0.25/w for FC+Res).",
    "(a) \"Trains\" is our criterion (final loss on the training set below 0.9 × ln 10); the "
    "paper states no number for its 10,000-layer net. Plain and residual nets of that depth "
    "are trained beside ReZero for contrast; the paper shows ReZero only.",
    "(a) The input layer is He-normal and linear without an activation, the output layer "
    "LeCun-normal (the model's defaults); the notebook applies ReLU after its Kaiming input "
    "layer and keeps PyTorch's default output initialization (`input_activation=True, "
    "torch_init=True` of `models.FullyConnected`, not used here).",
    "(b) 128 layers at d_model 256, 8 heads, FFN 1024 (about 101M parameters, Table 3's 101M; "
    "the width is inferred from that count), 40,000 iterations of Adam lr 1e-3, batch 16 × 512 "
    "bytes, clip 0.5, warm-up 100 (warm-up run only): the length and optimizer are our choice, "
    "as in Figure 7, since the paper's appendix with them is not in our copy.",
    "(b) The paper's 1.08 BPB is on the enwik8 test set; ours is the training BPB (and a "
    "held-out BPB on 4 batches). Without enwik8 the text is the Python standard library's "
    "source.",
    "One seed per variant.")


@dataclasses.dataclass(frozen=True)
class DepthSettings:
    """Sizes and optimization of the two depth experiments."""

    fc_depth: int = 10_000
    fc_width: int = 150
    fc_variants: tuple[str, ...] = tuple(FC_LABELS)
    train_size: int = 50_000
    fc_batch_size: int = 100
    fc_steps: int = 12_500          # 25 epochs of CIFAR-10 at batch 100 (authors' notebook)
    fc_lr: float = 0.003
    fc_log_every: int = 50
    profile_inputs: int = 4
    remat: bool = False
    synthetic_shape: tuple[int, int, int] = (32, 32, 3)
    lm: fig7.Fig7Settings = fig7.Fig7Settings(depth=128, d_model=256, ffn=1024, steps=40_000)
    lm_variants: tuple[str, ...] = LM_LABELS


SETTINGS = {
    "smoke": DepthSettings(fc_depth=64, fc_width=8, train_size=32, fc_batch_size=16,
                           fc_steps=10, fc_log_every=2, profile_inputs=2, synthetic_shape=(4, 4, 3),
                           lm=dataclasses.replace(fig7.SETTINGS["smoke"], depth=4, steps=6,
                                                  warmup=2),
                           lm_variants=("ReZero α=0", "Post-Norm")),
    # 2 CPU cores, under 15 minutes: the paper's depths at width 32 (FC) and d_model 32 (LM)
    "cpu": DepthSettings(fc_width=32, train_size=256, fc_batch_size=32, fc_steps=200,
                         fc_log_every=10, synthetic_shape=(4, 4, 3),
                         lm=dataclasses.replace(fig7.SETTINGS["cpu"], depth=128, d_model=32,
                                                heads=4, ffn=64, seq_len=32, batch_size=8,
                                                steps=200, warmup=40, log_every=10)),
    "paper": DepthSettings(),
}


def _profile(model, x) -> list | None:
    """χ_l of the stack at every depth, averaged over the inputs; None when non-finite.

    Non-finite parameters (a diverged run) give None before any Jacobian is taken: through
    ReLU, NaN weights have derivative 0, so J could look finite (even = I) for a broken net.
    """
    if not all(np.all(np.isfinite(np.asarray(leaf)))
               for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))):
        return None
    model.eval()
    embed_fn, states_fn, params = from_stack(model)
    try:
        x0 = jax.vmap(embed_fn, in_axes=(None, 0))(params, x)
        spec = layerwise_spectrum_fn(states_fn, batched=True)(params, x0)
    except FloatingPointError:
        return None
    finally:
        model.train()
    return depth_profile(spec)["chi"].tolist()


def _train_fc(s: DepthSettings, data, variant: str, seed: int, runs_dir: str) -> dict:
    n_in = math.prod(data.task.input_shape)
    model = models.FullyConnected(s.fc_depth, s.fc_width, variant=variant, in_features=n_in,
                                  out_features=data.task.num_classes, remat=s.remat,
                                  rngs=nnx.Rngs(seed))
    probes = np.asarray(data.probe_inputs(s.profile_inputs)).reshape(s.profile_inputs, n_in)
    chi_init = _profile(model, probes)
    config = TrainConfig(steps=s.fc_steps, batch_size=s.fc_batch_size, optimizer="adagrad",
                         lr=s.fc_lr, seed=seed, eval_every=0,
                         eval_batches=max(1, s.train_size // s.fc_batch_size),
                         checkpoint_every=max(s.fc_steps // 4, 1))
    records, result = train_run(model, data, config, os.path.join(runs_dir, f"fc-{variant}"),
                                input_shape=(n_in,), log_every=s.fc_log_every,
                                run_info={"experiment": "depth", "variant": variant,
                                          "depth": s.fc_depth, "width": s.fc_width})
    rows = [r for r in records if "loss" in r]
    evaluated = [r for r in records if "eval_loss" in r]  # step 0 and the last step
    alphas = rows[-1].get("alpha", {}) if rows else {}
    return {"steps": [r["step"] for r in rows], "loss": [r["loss"] for r in rows],
            "fixed_set_loss_init": evaluated[0]["eval_loss"] if evaluated else None,
            "fixed_set_loss_final": result.final.get("eval_loss"),
            "fixed_set_accuracy_final": result.final.get("eval_accuracy"),
            "nonfinite": bool(result.diverged),
            "chi_init": chi_init, "chi_final": _profile(model, probes),
            "mean_abs_alpha_final": (float(np.mean(np.abs(list(alphas.values()))))
                                     if alphas else None)}


def run(s: DepthSettings, *, data_dir=None, seed: int = 0, runs_dir: str) -> dict:
    """Trains the deep FC nets and the deep LMs; returns the JSON record."""
    data = FixedTrainingSet(image_data(data_dir, s.synthetic_shape), s.train_size, seed)
    fc = {v: _train_fc(s, data, v, seed, runs_dir) for v in s.fc_variants}
    text = language_data(data_dir, s.lm.seq_len, s.lm.text_bytes)
    floor = fig7.unigram_bpb(text.train)
    lm = {}
    for label in s.lm_variants:
        r = fig7.train_lm(s.lm, text, label, s.lm.depth, s.lm.steps, seed, runs_dir)
        r["failed"] = r["nonfinite"] or not (r["final_bpb"] is not None and r["final_bpb"] < floor)
        lm[label] = r
    return {"name": "depth", "fc_data": data.name, "lm_data": text.name,
            "chance_loss": math.log(data.task.num_classes),
            "settings": dataclasses.asdict(s), "seed": seed, "fc": fc, "lm": lm,
            "unigram_bpb": floor, "paper": PAPER}


def figure(record: dict):
    """(a) FC training loss, (b) χ_l at init (dashed, no marker) and after training, (c) LM BPB.

    Training losses are on a log scale (a residual net's loss can be 10^5 times the others');
    ReZero is drawn thickest and on top in every panel.
    """

    s = record["settings"]
    fig, (ax_loss, ax_chi, ax_lm) = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, (variant, r) in enumerate(record["fc"].items()):
        label = FC_LABELS.get(variant, variant)
        y = np.asarray([np.nan if v is None else v for v in r["loss"]], float)
        style = variant_style(variant, i, len(y))
        (line,) = ax_loss.plot(r["steps"], y, **style,
                               label=label + (" (non-finite loss)" if r["nonfinite"] else ""))
        for key, when in (("chi_init", "init"), ("chi_final", "trained")):
            chi_style = dict(style, color=line.get_color())
            if key == "chi_init":  # thin, white-edged, above a trained curve it may cover
                chi_style.update(marker="", linestyle="--", linewidth=1.0,
                                 zorder=style["zorder"] + 2,
                                 path_effects=[Stroke(linewidth=2.6, foreground="w"), Normal()])
            if r[key] is not None:
                chi = np.asarray(r[key], float)
                chi_style["markevery"] = max(1, len(chi) // 10)
                ax_chi.plot(np.arange(len(chi)), np.where(chi > 0, chi, np.nan), **chi_style,
                            label=f"{label}, {when}")
            else:
                ax_chi.plot([], [], **chi_style, label=f"{label}, {when}: non-finite")
    ax_loss.set_yscale("log")
    log_ticks(ax_loss)
    ax_loss.set(xlabel="iteration", ylabel="training loss (nats, log scale)",
                title=f"{s['fc_depth']:,}-layer FC nets, width {s['fc_width']}, Adagrad "
                      f"{s['fc_lr']:g}")
    ax_chi.set_yscale("log")
    ax_chi.axhline(1.0, color="0.6", linestyle=":", linewidth=0.8, zorder=1)
    log_ticks(ax_chi)
    ax_chi.set(xlabel="depth l", ylabel=r"$\chi_l = \|\partial x_l/\partial x_0\|_F^2/n$",
               title="layer-by-layer χ of the stack")
    curves = []
    for i, (label, r) in enumerate(record["lm"].items()):
        y = np.asarray([np.nan if v is None else v for v in r["bpb_smoothed"]], float)
        curves.append(y)
        ax_lm.plot(r["steps"], y, **variant_style(label, i, len(y)),
                   label=label + (" (non-finite loss)" if r["nonfinite"] else ""))
    ax_lm.axhline(record["unigram_bpb"], color="0.6", linestyle="--", linewidth=0.8, zorder=1,
                  label="byte-frequency entropy")
    ax_lm.set_ylim(top=min(ax_lm.get_ylim()[1], spike_top(curves, 1.6 * record["unigram_bpb"])))
    ax_lm.set(xlabel="iteration", ylabel="training bits per byte",
              title=f"{s['lm']['depth']}-layer character Transformers, d {s['lm']['d_model']}")
    for ax in (ax_loss, ax_lm):
        integer_ticks(ax.xaxis)
    for ax in (ax_loss, ax_chi, ax_lm):
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _fc_verdict(record: dict) -> str:
    fc = record["fc"]
    depth = record["settings"]["fc_depth"]

    chance = record["chance_loss"]

    def trained(r):  # fits the fixed set better than the uniform guess, by 10%
        b = r["fixed_set_loss_final"]
        return not r["nonfinite"] and b is not None and math.isfinite(b) and b < 0.9 * chance

    ok = [FC_LABELS.get(v, v) for v, r in fc.items() if trained(r)]
    failed = [FC_LABELS.get(v, v) for v, r in fc.items() if not trained(r)]
    text = (f"**Outcome:** at {depth:,} layers {', '.join(ok) if ok else 'no variant'} "
            f"fitted its fixed training set (final loss below 0.9 × ln C = "
            f"{0.9 * chance:.3g} nats, 10% under the uniform guess); "
            f"{', '.join(failed) if failed else 'none'} did not.")
    if "rezero" in fc:
        holds = trained(fc["rezero"])
        text += (f" The paper's claim that ReZero trains {depth:,}-layer FC nets "
                 f"{'holds' if holds else 'does **not** hold'} at this scale.")
    return text


def markdown(record: dict) -> str:
    s, fc, lm = record["settings"], record["fc"], record["lm"]
    fc_rows = []
    for v, r in fc.items():
        chi_i, chi_f = r["chi_init"], r["chi_final"]
        fc_rows.append([FC_LABELS.get(v, v), r["fixed_set_loss_init"], r["fixed_set_loss_final"],
                        r["fixed_set_accuracy_final"], chi_i[-1] if chi_i else None,
                        chi_f[-1] if chi_f else None, "yes" if r["nonfinite"] else "no"])
    lm_rows = [[label, "fails" if r["failed"] else "trains", r["final_bpb"], r["eval_bpb"],
                "yes" if r["nonfinite"] else "no"] for label, r in lm.items()]
    failed = [k for k, r in lm.items() if r["failed"]]
    lm_verdict = (f"At {s['lm']['depth']} layers {', '.join(failed) if failed else 'no variant'} "
                  f"failed to train; {', '.join(k for k in lm if k not in failed) or 'none'} "
                  f"trained.")
    if "ReZero α=0" in lm:
        lm_verdict += (f" The paper's claim that a {s['lm']['depth']}-layer ReZero Transformer trains "
                       f"{'does **not** hold' if lm['ReZero α=0']['failed'] else 'holds'} here")
        others = [k for k in lm if k != "ReZero α=0"]
        lm_verdict += (", and Post-Norm fails as in the paper." if all(
            lm[k]["failed"] for k in others if k.startswith("Post-Norm")) else
            "; Post-Norm did not fail here, unlike the paper.")
    text = [f"# Depth: {s['fc_depth']:,}-layer FC nets and {s['lm']['depth']}-layer Transformers\n",
            f"## (a) Fully connected, {s['fc_depth']:,} layers\n",
            f"Data: **{record['fc_data']}**. Width {s['fc_width']}, batch {s['fc_batch_size']}, "
            f"{s['fc_steps']} iterations of Adagrad lr {s['fc_lr']:g} (the paper's footnote; "
            f"PyTorch's Adagrad, as the authors ran it: `TrainConfig.adagrad`), ReLU, the "
            f"paper's σ_w² (2, 0.25 for FC+Res). χ_L: the mean squared singular value of "
            f"∂x_L/∂x_0 of the stack, averaged over {s['profile_inputs']} training inputs.\n",
            markdown_table(["variant", "loss on the fixed set at init", "after training",
                            "accuracy after", "χ_L at init", "χ_L after", "non-finite loss"],
                           fc_rows),
            f"Paper: a 10,000-layer ReZero net trains (Adagrad 0.003; the authors' notebook: "
            f"width {PAPER['fc_width']}, 25 epochs of CIFAR-10).\n",
            _fc_verdict(record) + "\n",
            f"## (b) Character Transformers, {s['lm']['depth']} layers\n",
            f"Data: **{record['lm_data']}**. d_model {s['lm']['d_model']}, {s['lm']['heads']} "
            f"heads, FFN {s['lm']['ffn']}, sequence {s['lm']['seq_len']}, batch "
            f"{s['lm']['batch_size']}, {s['lm']['steps']} iterations of Adam lr "
            f"{s['lm']['lr']:g}, clip {s['lm']['clip']}, warm-up {s['lm']['warmup']} (warm-up "
            f"run only). Byte-frequency entropy: {record['unigram_bpb']:.3f} bits.\n",
            markdown_table(["variant", "outcome", "final training BPB", "held-out BPB",
                            "non-finite loss"], lm_rows),
            f"Paper: 128-layer ReZero reaches {PAPER['lm_rezero_bpb']} BPB on enwik8; Post-Norm "
            f"diverges at 64 layers already.\n",
            lm_verdict + "\n",
            f"Runs here are far shorter and narrower than the paper's ({fmt(s['fc_steps'])} "
            f"FC iterations, {fmt(s['lm']['steps'])} LM iterations); read them as a check that "
            f"the depths train at all, not as the paper's numbers.\n",
            paper_differences(PAPER_DIFFERENCES, record.get("scale"))]
    return "\n".join(text)
