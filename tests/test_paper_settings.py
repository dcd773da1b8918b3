"""`--scale paper` is long and large enough for what the paper reports (iterations, Table 3's
parameter counts), and every result's .md says how paper scale differs from the paper
("## Paper scale against the paper"). The settings' values themselves are not restated here:
they are written once, in each experiment's SETTINGS["paper"]."""

import dataclasses
import json
import math
import os
import types

import jax
import pytest
from flax import nnx

import models
from isometry.experiments import depth, fig2, fig4, fig5, fig7, fig8, table2, toy_depth
from isometry.experiments._report import PAPER_HEADING

MODULES = (fig2, toy_depth, fig4, fig5, table2, fig7, fig8, depth)


def test_paper_scale_is_long_enough_for_what_the_paper_reports():
    s = table2.SETTINGS["paper"]
    per_epoch = math.ceil(50_000 / s.batch_size)  # CIFAR-10's training set, the last batch short
    assert s.eval_every == per_epoch  # one evaluation an epoch
    assert s.steps > max(s.decay_epochs) * per_epoch  # the learning-rate steps happen
    f7 = fig7.SETTINGS["paper"]
    assert f7.steps > 13_690            # the 12-layer reference reaches 1.2 BPB at 13,690
    assert f7.deep_steps >= f7.steps    # 64 layers: the paper's 1.11 BPB is lower still
    # Figure 8 shows Figure 7's 64-layer ReZero run: the same model and length
    f8 = fig8.SETTINGS["paper"]
    assert (f8.depth, f8.d_model, f8.ffn, f8.steps) == (
        f7.deep_depth, f7.deep_d_model, f7.deep_ffn, f7.deep_steps)
    assert depth.SETTINGS["paper"].lm.steps >= f7.deep_steps


def _parameters(depth_: int, s) -> int:
    abstract = nnx.eval_shape(lambda: models.Transformer(
        depth_, s.d_model, heads=s.heads, ffn=s.ffn, variant="rezero", vocab_size=256,
        causal=True, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("layers, settings, paper", [
    (12, fig7.SETTINGS["paper"], 38e6),
    (64, fig7.deep_settings(fig7.SETTINGS["paper"]), 51e6),
    (64, fig8.SETTINGS["paper"], 51e6),
    (128, depth.SETTINGS["paper"].lm, 101e6)])
def test_transformer_sizes_match_table_3(layers, settings, paper):
    assert abs(_parameters(layers, settings) / paper - 1) < 0.05


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_module_states_its_differences(module):
    diffs = module.PAPER_DIFFERENCES
    assert isinstance(diffs, tuple) and diffs
    assert all(isinstance(d, str) and d.rstrip().endswith((".", ")")) for d in diffs)


def test_table2_choices_stay_in_the_differences():
    assert table2.CHOICES and set(table2.CHOICES) <= set(table2.PAPER_DIFFERENCES)
    assert any("Gated ResNet" in d for d in table2.PAPER_DIFFERENCES)


REPRODUCE = os.path.join(os.path.dirname(__file__), "..", "docs", "reproduce")


@pytest.mark.parametrize("module", [fig2, fig4, fig5, table2, fig7, fig8, depth],
                         ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_markdown_of_the_committed_record_has_the_section(module):
    name = module.__name__.rsplit(".", 1)[1]
    with open(os.path.join(REPRODUCE, f"{name}.json")) as f:
        md = module.markdown(json.load(f))
    assert PAPER_HEADING in md
    section = md.split(PAPER_HEADING, 1)[1]
    assert all(d in section for d in module.PAPER_DIFFERENCES)


def test_markdown_of_the_toy_depth_sweep_has_the_section():
    s = toy_depth.DepthSweepSettings(depths=(2, 3, 4), max_steps=2000, grid_points=9,
                                     iterations=4, lr_range=(1e-8, 1e-1))
    md = toy_depth.markdown(toy_depth.record(toy_depth.depth_sweep(s)))
    assert PAPER_HEADING in md and toy_depth.PAPER_DIFFERENCES[0] in md


def test_a_paper_scale_record_says_nothing_about_another_scale():
    rec = json.load(open(os.path.join(REPRODUCE, "fig8.json")))
    assert "ran at scale" in fig8.markdown(dict(rec, scale="cpu"))
    assert "ran at scale" not in fig8.markdown(dict(rec, scale="paper"))


def test_table2_paper_scale_steps_the_learning_rate(monkeypatch, tmp_path):
    """The schedule reaches the training run's `TrainConfig`, at the epochs' iterations."""
    seen = []
    monkeypatch.setattr(table2, "train_run", lambda model, data, config, *a, **kw: (
        seen.append(config) or ([], types.SimpleNamespace(diverged=False))))
    s = dataclasses.replace(table2.SETTINGS["smoke"], decay_epochs=(1, 2), variants=("vanilla",))
    table2.run(s, runs_dir=str(tmp_path))
    per_epoch = seen[0].decay_steps[0]
    assert seen[0].schedule == "step" and seen[0].decay_factor == 0.1
    assert per_epoch > 0 and seen[0].decay_steps[1] in (2 * per_epoch, 2 * per_epoch + 1)
    seen.clear()
    table2.run(table2.SETTINGS["smoke"], runs_dir=str(tmp_path))
    assert seen[0].schedule == "constant" and seen[0].decay_steps == ()
