"""`--lr-sweep`: each variant at its best learning rate of a grid, the same budget for all."""

import json
import math
import os

import pytest

from isometry.cli import main
from isometry.experiments import reproduce
from isometry.experiments._sweep import final_loss, lr_grid, sweep_lr


def test_sweep_picks_the_lowest_final_loss_and_skips_diverged_rates():
    losses = {0.001: 2.0, 0.003: 0.7, 0.01: 0.9, 0.03: math.inf, 0.1: float("nan")}
    tried = []
    sweep = sweep_lr(lambda lr: tried.append(lr) or losses[lr], 0.01, (0.1, 0.3, 1, 3, 10))
    assert tried == [0.001, 0.003, 0.01, 0.03, 0.1]  # every rate once, in grid order
    assert sweep.best_lr == 0.003 and sweep.diverged == (0.03, 0.1)
    record = sweep.record()
    assert record["best_lr"] == 0.003 and record["grid"] == list(sweep.grid)


def test_ties_keep_the_shared_rate_and_all_diverged_falls_back_to_it():
    assert sweep_lr(lambda lr: 1.0, 0.01, (0.3, 1, 3)).best_lr == 0.01
    assert sweep_lr(lambda lr: math.nan, 0.01, (0.3, 3)).best_lr == 0.01


def test_final_loss_is_the_tail_mean_and_inf_when_diverged():
    assert final_loss([5.0, 3.0, 2.0, 1.0], tail=2) == 1.5
    assert final_loss([1.0, float("nan")]) == math.inf
    assert lr_grid(0.01, (0.3, 3)) == (0.003, 0.03)


@pytest.fixture(scope="module")
def fig5_sweep(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweep"))
    assert main(["reproduce", "fig5", "--scale", "smoke", "--out", out, "--lr-sweep", "1,3"]) == 0
    with open(os.path.join(out, "fig5.json")) as f:
        return out, json.load(f)


def test_fig5_sweep_trains_every_variant_at_its_best_rate(fig5_sweep):
    out, record = fig5_sweep
    shared_lr = record["settings"]["lr"]
    for variant, sweep in record["lr_sweep"].items():
        assert sweep["grid"] == pytest.approx([shared_lr, 3 * shared_lr])
        finite = [(x, lr) for lr, x in zip(sweep["grid"], sweep["final_loss"]) if x is not None]
        assert sweep["best_lr"] == min(finite)[1]
        best = record["best_lr"]["outcomes"][variant]
        assert best["lr"] == sweep["best_lr"] and record["outcomes"][variant]["lr"] == shared_lr
    ref = record["best_lr"]["outcomes"]["rezero"]["mean_steps"]
    for o in record["best_lr"]["outcomes"].values():
        if o["mean_steps"] and ref:
            assert o["rezero_speedup"] == pytest.approx(o["mean_steps"] / ref)
    md = open(os.path.join(out, "fig5.md")).read()
    assert "each at its best lr" in md and "**Outcome at the best learning rates:**" in md


def test_a_grid_of_the_shared_rate_alone_reproduces_the_shared_runs(fig5_sweep, tmp_path):
    out, _ = fig5_sweep  # its runs are reused: nothing is trained again
    paths = reproduce("fig5", "smoke", str(tmp_path), runs_dir=os.path.join(out, "runs"),
                      lr_sweep=(1.0,))
    with open(paths["json"]) as f:
        record = json.load(f)
    assert record["best_lr"]["outcomes"] == record["outcomes"]
    assert record["best_lr"]["curves"] == record["curves"]


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "fig2", "--scale", "smoke", "--lr-sweep"], "--lr-sweep works with fig5, fig7, table2, table3"),
    (["reproduce", "fig5", "--scale", "smoke", "--lr-sweep", "0,1"], "give positive factors"),
    (["reproduce", "fig5", "--scale", "smoke", "--lr-sweep", "a"], "give positive factors"),
])
def test_bad_sweep_is_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_table2_sweep_reports_both_speedups(tmp_path):
    paths = reproduce("table2", "smoke", str(tmp_path), lr_sweep=(0.5, 1.0))
    with open(paths["json"]) as f:
        record = json.load(f)
    for label, sweep in record["lr_sweep"].items():
        finite = [(x, lr) for lr, x in zip(sweep["grid"], sweep["final_loss"]) if x is not None]
        assert sweep["best_lr"] == min(finite)[1]
        assert record["best_lr"]["results"][label]["lr"] == sweep["best_lr"]
    assert set(record["best_lr"]["speedups"]) == set(record["speedups"]) == {"+ ReZero vs vanilla"}
    md = open(paths["md"]).read()
    assert "each at its best lr" in md and "**Outcome at the best learning rates:**" in md


def test_fig7_sweep_reports_the_speedup_at_the_best_rates(tmp_path):
    paths = reproduce("fig7", "smoke", str(tmp_path), lr_sweep=(1.0, 3.0))
    with open(paths["json"]) as f:
        record = json.load(f)
    shared_lr = record["settings"]["lr"]
    for label, sweep in record["lr_sweep"].items():
        assert sweep["grid"] == pytest.approx([shared_lr, 3 * shared_lr])
        finite = [(x, lr) for lr, x in zip(sweep["grid"], sweep["final_loss"]) if x is not None]
        assert sweep["best_lr"] == min(finite)[1]
        assert record["best_lr"]["shallow"][label]["lr"] == sweep["best_lr"]
        assert record["shallow"][label]["lr"] == shared_lr
    md = open(paths["md"]).read()
    assert "each variant at its own best learning rate" in md and "each at its best lr" in md
