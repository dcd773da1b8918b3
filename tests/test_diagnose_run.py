"""`iso.diagnose_run` and `isometry diagnose --run`: the diagnosis at every checkpoint of a
training run equals `iso.diagnose` of the parameters loaded by hand; bad run directories are
one line from the command line (exit 2, no traceback)."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from isometry import data as D
from isometry import plot
from isometry.cli import main
from isometry.train import RunConfigError, TrainConfig, load_checkpoint, make_optimizer, train

#: what `isometry train --model fc --variant rezero --depth 3 --width 8 --data synthetic:2x2x3`
#: stores about the model (its config.json's model keys)
RUN_INFO = dict(model="fc", variant="rezero", depth=3, width=8, alpha_init=0.0,
                activation="relu", data="synthetic:2x2x3", x64=False)


def _fc():
    return models.FullyConnected(3, 8, variant="rezero", activation="relu", in_features=12,
                                 out_features=10, rngs=nnx.Rngs(0))


def _x():
    return np.asarray(D.load_data("synthetic:2x2x3").probe_inputs(1))[0].reshape(12)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run: 2 steps, a kept copy of that checkpoint, resumed to 4 steps."""
    run = tmp_path_factory.mktemp("runs") / "run"
    data = D.load_data("synthetic:2x2x3")
    kw = dict(run_dir=str(run), input_shape=(12,), probes=0, run_info=RUN_INFO)
    train(_fc(), data, TrainConfig(steps=2, batch_size=8, lr=0.1, checkpoint_every=2), **kw)
    shutil.copy(run / "checkpoint.npz", run / "checkpoint_2.npz")
    train(_fc(), data, TrainConfig(steps=4, batch_size=8, lr=0.1, checkpoint_every=2),
          resume=True, **kw)
    return run


def _by_hand(path, config):
    """`iso.diagnose` of a checkpoint's parameters, loaded with the public loader."""
    graphdef, params, rest = nnx.split(_fc(), nnx.Param, ...)
    template = (params, rest, make_optimizer(config, params).init(params))
    step, (params, rest, _) = load_checkpoint(str(path), template)
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return step, iso.diagnose(model, _x())


def test_each_checkpoint_equals_diagnose_of_the_loaded_parameters(run_dir):
    result = iso.diagnose_run(str(run_dir), _fc(), _x(), initial=True)
    assert result.steps == (0, 2, 4)
    config = TrainConfig(steps=4, batch_size=8, lr=0.1, checkpoint_every=2)
    for name, i in (("checkpoint_2.npz", 1), ("checkpoint.npz", 2)):
        step, want = _by_hand(run_dir / name, config)
        got = result.diagnoses[i]
        assert step == result.steps[i]
        np.testing.assert_array_equal(got.spectrum.singular_values, want.spectrum.singular_values)
        np.testing.assert_array_equal(got.chi_profile, want.chi_profile)
        assert got.growth_rate == want.growth_rate and got.phase == want.phase
        assert got.codes == want.codes
        for k in want.alphas:
            np.testing.assert_array_equal(got.alphas[k], want.alphas[k])
            np.testing.assert_array_equal(got.alpha_grads[k], want.alpha_grads[k])
    init = result.diagnoses[0]  # α = 0 everywhere at init: J = I, χ = 1
    assert result.rows()[0]["chi"] == pytest.approx(1.0) and result.rows()[0]["alpha_max"] == 0.0
    assert result.rows()[2]["alpha_max"] != 0.0 and init.spectrum is not None


def test_table_json_and_figure(run_dir, tmp_path):
    result = iso.diagnose_run(str(run_dir), _fc(), _x())
    assert result.steps == (2, 4)
    lines = result.table().splitlines()
    assert lines[0].split()[:3] == ["step", "chi", "mean_log"] and len(lines) == 3
    doc = result.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["steps"] == [2, 4] and len(doc["diagnoses"]) == 2
    assert doc["rows"][1]["step"] == 4
    plot.save(result.figure(), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_bad_run_dirs_raise_one_line(run_dir, tmp_path):
    with pytest.raises(RunConfigError, match="not a run directory"):
        iso.diagnose_run(str(tmp_path), _fc(), _x())
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "config.json", empty / "config.json")
    with pytest.raises(RunConfigError, match="no checkpoint"):
        iso.diagnose_run(str(empty), _fc(), _x())


def _foreign(run_dir, tmp_path):
    """A copy of the run whose checkpoint says another parameter layout."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(run_dir / "config.json", foreign / "config.json")
    z = dict(np.load(run_dir / "checkpoint.npz"))
    z["layout"] = np.asarray("per-layer")
    np.savez(foreign / "checkpoint.npz", **z)
    return foreign


def test_cli_diagnose_run(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["diagnose", "--run", str(run_dir), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["diagnosis"]["steps"] == [0, 2, 4] and doc["model"] == "fc"
    assert (out / "diagnosis_run.png").exists() and (out / "diagnosis_run.json").exists()
    api = iso.diagnose_run(str(run_dir), _fc(), _x(), initial=True)
    assert doc["diagnosis"]["rows"][2]["chi"] == pytest.approx(api.rows()[2]["chi"], rel=1e-6)


@pytest.mark.parametrize("case", ["not-a-dir", "no-config", "no-checkpoint", "foreign-layout"])
def test_cli_bad_run_dir_is_one_line(case, run_dir, tmp_path, capsys):
    path = {"not-a-dir": lambda: tmp_path / "missing",
            "no-config": lambda: tmp_path,
            "no-checkpoint": lambda: _no_checkpoint(run_dir, tmp_path),
            "foreign-layout": lambda: _foreign(run_dir, tmp_path)}[case]()
    capsys.readouterr()
    assert main(["diagnose", "--run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert {"not-a-dir": "not a directory", "no-config": "not a run directory",
            "no-checkpoint": "no checkpoint", "foreign-layout": "layout"}[case] in err


def _no_checkpoint(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "config.json", empty / "config.json")
    return empty
