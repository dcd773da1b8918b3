"""Tests of `isometry toy`: the files it writes and the numbers in them."""

import json
import math

import pytest

from isometry import toy
from isometry.cli import main

SMALL = ["--grid", "24", "--steps", "1500", "--w-starts=-1.5,1.0"]


@pytest.fixture(scope="module")
def fig2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    assert main(["toy", "--out", str(out), *SMALL]) == 0
    return out


def test_writes_figure_and_json(fig2_dir):
    png = fig2_dir / "fig2.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    record = json.loads((fig2_dir / "fig2.json").read_text())
    setup = record["setup"]
    assert setup["depth"] == 5 and setup["target"] == 50.0 and len(setup["inputs"]) == 9
    assert setup["grid_size"] == 24 and setup["max_steps"] == 1500
    assert record["solution_product"] == pytest.approx(1.1867241478865562, rel=1e-15)
    assert [r["w0"] for r in record["rezero"]] == [-1.5, 1.0]
    assert [r["alpha0"] for r in record["residual"]] == [1.0, 1.0]
    assert not list(fig2_dir.glob("*.tmp"))


def test_json_numbers_match_the_trajectories(fig2_dir):
    record = json.loads((fig2_dir / "fig2.json").read_text())
    problem = toy.toy_problem()
    tol = record["setup"]["tol"]
    for name, alpha0, train in (("rezero", 0.0, True), ("residual", 1.0, False)):
        for r in record[name]:
            t = toy.descend(problem, r["w0"], alpha0, record["setup"]["lr"], train_alpha=train,
                            max_steps=1500, tol=tol, record=False)
            assert r["steps"] == int(t.steps) and r["converged"] == bool(t.converged)
            assert r["final_w"] == float(t.final_w) and r["final_alpha"] == float(t.final_alpha)
            assert r["final_product"] == pytest.approx(r["final_w"] * r["final_alpha"], rel=1e-15)
            if r["converged"]:
                assert r["final_loss"] <= tol
                assert r["final_product"] == pytest.approx(record["solution_product"], rel=1e-4)
    assert all(r["converged"] for r in record["rezero"])
    # α = 1 from w = −1.5 sits where 1 + w < 0 and the gradient is tiny: stalls at the budget.
    stalled = record["residual"][0]
    assert not stalled["converged"] and not stalled["diverged"] and stalled["steps"] == 1500


def test_depth_sweep_files(tmp_path):
    args = ["toy", "--out", str(tmp_path), *SMALL, "--depth-sweep", "--depths", "2,3,6",
            "--sweep-steps", "2000"]
    assert main(args) == 0
    assert (tmp_path / "lr_depth.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "lr_depth.json").read_text())
    assert record["depths"] == [2, 3, 6] and record["setup"]["max_steps"] == 2000
    for name in ("residual", "rezero"):
        for lr, fails in zip(record[name]["lr_max"], record[name]["lr_fails"]):
            assert lr is not None and 0 < lr < fails and math.isfinite(fails)


@pytest.mark.parametrize("bad", [
    ["--w-range", "1"], ["--alpha-range", "2,1"], ["--w-range", "a,b"], ["--depth", "0"], ["--lr=-1e-3"],
    ["--grid", "1"], ["--target", "-5"], ["--inputs", "0,0"], ["--steps", "0"],
    ["--depth-sweep", "--depths", "0,3"],
])
def test_bad_options_exit_2_with_one_line(bad, tmp_path, capsys):
    try:
        code = main(["toy", "--out", str(tmp_path), *bad])
    except SystemExit as exit_:  # argparse's own errors exit from the parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("isometry toy: error:") and "\n" not in err
    assert not (tmp_path / "fig2.json").exists()
