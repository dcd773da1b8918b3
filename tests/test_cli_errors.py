"""Every bad input of the command line: one clear line, exit code 2, never a traceback (#31).

`ARGUMENT_ERRORS` is a table (id, argv, words of the one line). All its cases run in one
fresh interpreter that calls `isometry.cli.main` on each in turn and then reports whether
jax or flax were imported: an argument error (unknown option, bad choice, out-of-range
value, unusable output folder) of any subcommand must answer before they are, as `--help`
must. The other tests run in this process: the CLI's copies of the library's names, a full
disk while training and while writing a report, and defaults that now work.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isometry.cli import SUBCOMMANDS, build_parser, disk_full_message, join_negative_values, main
from isometry.cli import _devices, _names

# --- argument errors, before jax and flax are imported ---------------------------------------

FILE = "{dir}/a-file"
ARGUMENT_ERRORS = [
    ("spectrum-unknown-option", ["spectrum", "--bogus"], "isometry spectrum: error: unrecognized arguments: --bogus"),
    ("spectrum-bad-choice", ["spectrum", "--method", "exact"], "invalid choice: 'exact'"),
    ("spectrum-samples-0", ["spectrum", "--samples", "0"], "--samples must be at least 1"),
    ("spectrum-empty-variant", ["spectrum", "--variant", ""],
     "--variant is empty; give one of the fc variants: plain, residual, norm, prenorm, postnorm, rezero"),
    ("spectrum-alpha-init-without-alpha", ["spectrum", "--variant", "plain,norm", "--alpha-init", "0.5"],
     "--alpha-init: fc plain, norm have no residual weights alpha to set; the fc variants with alpha: rezero"),
    ("spectrum-alpha-init-resnet", ["spectrum", "--model", "resnet", "--variant", "residual", "--alpha-init", "1"],
     "the resnet variants with alpha: gated, rezero, prenorm_rezero"),
    ("spectrum-simulate-devices-0", ["spectrum", "--simulate-devices", "0"],
     "--simulate-devices must be between 1 and 4096"),
    ("spectrum-simulate-devices-100000", ["spectrum", "--simulate-devices", "100000"],
     "(more take minutes for the CPU backend to start), got 100000"),
    ("spectrum-bad-mesh", ["spectrum", "--mesh", "rows=2"], "use 'data=D' or 'data=D,model=M'"),
    ("spectrum-processes-without-coordinator", ["spectrum", "--num-processes", "2"], "need --coordinator"),
    ("spectrum-out-is-a-file", ["spectrum", "--out", FILE], "is a file, not a folder"),
    ("train-unknown-option", ["train", "--bogus"], "isometry train: error: unrecognized arguments: --bogus"),
    ("train-bad-choice", ["train", "--optimizer", "nadam"], "invalid choice: 'nadam'"),
    ("train-momentum-without-sgd", ["train", "--momentum", "0.5"],
     "--momentum applies to --optimizer sgd only, not adagrad"),
    ("train-decay-factor-without-step", ["train", "--decay-factor", "0.5"],
     "--decay-factor applies to --schedule step only"),
    ("train-alpha-lr-without-alpha", ["train", "--variant", "plain", "--alpha-lr", "0.1"],
     "--alpha-lr applies to variants with α only"),
    ("train-image-size", ["train", "--model", "resnet", "--image-size", "24"],
     "training takes its images from --data"),
    ("train-stall-timeout-negative", ["train", "--stall-timeout", "-1"],
     "--stall-timeout must be 0 (never) or more seconds"),
    ("train-empty-variant", ["train", "--variant", ""], "--variant is empty; give one of the fc variants"),
    ("train-alpha-init-without-alpha", ["train", "--variant", "plain", "--alpha-init", "0.5"],
     "--alpha-init: fc plain has no residual weights alpha"),
    ("train-two-variants", ["train", "--variant", "plain,rezero"], "give one --variant, got plain,rezero"),
    ("train-two-depths", ["train", "--depth", "2,3"], "give one --depth, got 2,3"),
    ("train-track-every-0", ["train", "--track-every", "0"], "--track-every must be at least 1"),
    ("train-epochs-negative", ["train", "--epochs", "-1"], "--epochs must be a positive number"),
    ("train-simulate-devices-0", ["train", "--simulate-devices", "0"], "--simulate-devices must be between 1"),
    ("train-run-dir-is-a-file", ["train", "--run-dir", FILE], "is a file"),
    ("plot-unknown-option", ["plot", "{dir}", "--bogus"], "isometry plot: error: unrecognized arguments"),
    ("plot-not-a-run-dir", ["plot", "{dir}"], "holds no metrics.jsonl"),
    ("plot-negative-range-is-a-value", ["plot", "{dir}/nothing", "--range", "-1,1"], "'{dir}/nothing' does not exist"),
    ("plot-range-reversed", ["plot", "{dir}", "--range", "1,-1"], "--range takes two numbers LO,HI with LO < HI"),
    ("toy-unknown-option", ["toy", "--bogus"], "isometry toy: error: unrecognized arguments"),
    ("toy-bad-number", ["toy", "--grid", "many"], "argument --grid: invalid int value"),
    ("toy-grid-1", ["toy", "--grid", "1"], "--grid must be at least 2, got 1"),
    ("toy-negative-ranges-are-values", ["toy", "--w-range", "-2,2", "--alpha-range", "-1,-2"],
     "--alpha-range must be 'low,high' with low < high, got -1,-2"),
    ("toy-negative-lr", ["toy", "--lr", "-1e-3"], "--lr must be a finite number > 0"),
    ("toy-out-is-a-file", ["toy", "--out", FILE], "is a file"),
    ("theory-unknown-option", ["theory", "--bogus"], "isometry theory: error: unrecognized arguments"),
    ("theory-bad-choice", ["theory", "--weights", "uniform"], "invalid choice: 'uniform'"),
    ("theory-alpha-with-plain", ["theory", "--alpha", "0.1"],
     "--alpha sets the residual weights of --variant rezero; --variant plain nets have no alpha"),
    ("theory-rezero-without-alpha", ["theory", "--variant", "rezero"], "--alpha needs positive values"),
    ("theory-sigma-w2-0", ["theory", "--sigma-w2", "0"], "--sigma-w2 must be positive"),
    ("theory-out-is-a-file", ["theory", "--out", FILE], "is a file"),
    ("reproduce-unknown-option", ["reproduce", "fig2", "--bogus"], "isometry reproduce: error: unrecognized"),
    ("reproduce-bad-name", ["reproduce", "fig99"], "unknown NAME 'fig99'"),
    ("reproduce-bad-scale", ["reproduce", "fig2", "--scale", "huge"], "unknown --scale 'huge'"),
    ("reproduce-lr-sweep-elsewhere", ["reproduce", "fig2", "--lr-sweep", "1"], "--lr-sweep works with fig5"),
    ("reproduce-out-is-a-file", ["reproduce", "fig2", "--out", FILE], "is a file"),
    ("diagnose-unknown-option", ["diagnose", "--bogus"], "isometry diagnose: error: unrecognized"),
    ("diagnose-bad-choice", ["diagnose", "--model", "mlp"], "invalid choice: 'mlp'"),
    ("diagnose-empty-variant", ["diagnose", "--variant", ""], "--variant is empty; give one of the fc variants"),
    ("diagnose-alpha-init-without-alpha", ["diagnose", "--variant", "plain", "--alpha-init", "0.3"],
     "--alpha-init: fc plain has no residual weights alpha"),
    ("diagnose-two-variants", ["diagnose", "--variant", "plain,rezero"], "give one --variant"),
    ("diagnose-sigma-w2-0", ["diagnose", "--sigma-w2", "0"],
     "--sigma-w2 (weight variance x width) must be a positive number, got 0"),
    ("diagnose-sigma-b2-negative", ["diagnose", "--sigma-b2", "-1"],
     "--sigma-b2 (bias variance) must be 0 or a positive number, got -1"),
    ("diagnose-sigma-b2-not-fc", ["diagnose", "--model", "resnet", "--sigma-b2", "0.1"],
     "--sigma-b2 applies to --model fc only"),
    ("diagnose-burn-in-past-depth", ["diagnose", "--depth", "8", "--burn-in", "8"],
     "--burn-in must be in [0, depth) = [0, 8), got 8"),
    ("diagnose-out-is-a-file", ["diagnose", "--out", FILE], "is a file"),
    ("diagnose-out-unwritable", ["diagnose", "--out", FILE + "/sub"], "is not a writable folder"),
    ("diagnose-run-missing", ["diagnose", "--run", "{dir}/nothing"], "is not a directory"),
    ("diagnose-run-not-a-run", ["diagnose", "--run", "{dir}"], "holds no config.json"),
]
HELP = [["--help"], *([name, "--help"] for name in SUBCOMMANDS)]

#: Run in a fresh interpreter: each argv through main, then which heavy packages it loaded.
_PROBE = """
import contextlib, io, json, sys
from isometry.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    results.append(dict(code=code, out=out.getvalue(), err=err.getvalue()))
heavy = [m for m in ("jax", "flax", "scipy", "matplotlib", "optax") if m in sys.modules]
print(json.dumps(dict(results=results, heavy=heavy)))
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """{"results": [per case of ARGUMENT_ERRORS, then per HELP], "heavy": [...], "left": [...]}."""
    folder = tmp_path_factory.mktemp("cli-errors")
    (folder / "a-file").write_bytes(b"x")
    cases = [[a.replace("{dir}", str(folder)) for a in argv] for _, argv, _ in ARGUMENT_ERRORS]
    env = dict(os.environ, ISOMETRY_COMPILATION_CACHE="off", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(cases + HELP),
                          capture_output=True, text=True, timeout=300, cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["left"] = sorted(os.listdir(folder))
    doc["folder"] = str(folder)
    return doc


@pytest.mark.parametrize("i", range(len(ARGUMENT_ERRORS)), ids=[c[0] for c in ARGUMENT_ERRORS])
def test_argument_error_is_one_line_exit_2(probed, i):
    _, argv, words = ARGUMENT_ERRORS[i]
    result = probed["results"][i]
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1 and "Traceback" not in result["err"], result["err"]
    assert lines[0].startswith(f"isometry {argv[0]}: error: "), lines[0]
    assert words.replace("{dir}", probed["folder"]) in lines[0], lines[0]


def test_argument_errors_and_help_load_no_jax_and_leave_nothing(probed):
    assert probed["heavy"] == [], "argument errors or --help imported " + ", ".join(probed["heavy"])
    assert probed["left"] == ["a-file"], "a failed command left files or folders behind"


@pytest.mark.parametrize("i", range(len(HELP)), ids=[" ".join(h) for h in HELP])
def test_help_exits_0(probed, i):
    result = probed["results"][len(ARGUMENT_ERRORS) + i]
    assert result["code"] == 0 and result["err"] == ""
    assert result["out"].startswith("usage: isometry " + " ".join(HELP[i][:-1])), result["out"][:200]


def _help(probed, command) -> str:
    return probed["results"][len(ARGUMENT_ERRORS) + 1 + SUBCOMMANDS.index(command)]["out"]


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_one_model_commands_say_their_default_variant(probed, command):
    text = " ".join(_help(probed, command).split())
    assert "every variant" not in text
    assert "--variant VARIANT the variant to build (default: rezero" in text
    assert "--depth DEPTH the depth (default: 32)" in text


@pytest.mark.parametrize("command, example", [
    ("diagnose", "\n    isometry diagnose --model fc --variant plain --activation tanh"),
    ("diagnose", "\n    isometry diagnose --model transformer --variant postnorm --depth 64 --json\n"),
    ("diagnose", "\n    isometry diagnose --run runs/rezero\n"),
    ("theory", "\n    isometry theory --activation relu --weights orthogonal"),
    ("theory", "\n    isometry theory --variant rezero --alpha 0.1,0.3"),
])
def test_help_examples_keep_their_lines(probed, command, example):
    assert example in _help(probed, command)


# --- the parts, in this process -----------------------------------------------------------------

def test_names_match_the_library():
    """`isometry.cli._names` copies the library's tables so parsing imports none of it."""
    import models
    from isometry import experiments, theory
    from isometry import train as training
    from isometry.experiments import fig2, toy_depth
    from models import fully_connected, resnet, transformer

    assert _names.MODEL_VARIANTS == {"fc": fully_connected.VARIANTS, "resnet": resnet.VARIANTS,
                                     "transformer": transformer.VARIANTS}
    for name, module in (("fc", fully_connected), ("resnet", resnet), ("transformer", transformer)):
        if hasattr(module, "ALPHA_VARIANTS"):
            assert _names.ALPHA_VARIANTS[name] == module.ALPHA_VARIANTS, name
    assert _names.ACTIVATIONS == tuple(sorted(models.ACTIVATIONS)) == tuple(sorted(theory.ACTIVATIONS))
    assert _names.WEIGHTS == theory.WEIGHTS
    assert (_names.OPTIMIZERS, _names.ADAGRAD_STYLES, _names.SCHEDULES) == (
        training.OPTIMIZERS, training.ADAGRAD_STYLES, training.SCHEDULES)
    assert _names.EXPERIMENTS == tuple(experiments.EXPERIMENTS)
    assert _names.SCALES == experiments.SCALES and _names.SWEEPABLE == experiments.sweepable()
    fig2_settings, sweep = fig2.Figure2Settings(), toy_depth.DepthSweepSettings()
    assert _names.FIG2_DEFAULTS == {k: getattr(fig2_settings, k) for k in _names.FIG2_DEFAULTS}
    assert _names.SWEEP_DEFAULTS == {k: getattr(sweep, k) for k in _names.SWEEP_DEFAULTS}


@pytest.mark.parametrize("model", sorted(_names.MODEL_VARIANTS))
def test_alpha_variants_are_the_variants_with_alpha(model):
    """The variants `--alpha-init` may be given with are those whose models hold an α."""
    import jax
    from flax import nnx

    from isometry.cli import _zoo

    parser = argparse.ArgumentParser()
    _zoo.add_model_args(parser)
    args = parser.parse_args(["--model", model, "--depth", "8", "--width", "4", "--channels", "2",
                              "--d-model", "4", "--heads", "1", "--ffn", "4"])
    kind = _zoo.MODEL_KINDS[model]
    with_alpha = []
    for variant in kind.variants:
        net = kind.build(args, variant, 8, nnx.Rngs(0))
        paths = jax.tree_util.tree_flatten_with_path(nnx.state(net))[0]
        if any("alpha" in jax.tree_util.keystr(path) for path, _ in paths):
            with_alpha.append(variant)
    assert tuple(with_alpha) == _names.ALPHA_VARIANTS[model]


@pytest.mark.parametrize("argv, joined", [
    (["plot", "r", "--range", "-1,1"], ["plot", "r", "--range=-1,1"]),
    (["toy", "--w-range", "-2.5,2.5", "--lr", "-1e-3"], ["toy", "--w-range=-2.5,2.5", "--lr=-1e-3"]),
    (["toy", "--w-starts", "-.5,1", "--depth", "3"], ["toy", "--w-starts=-.5,1", "--depth", "3"]),
    (["toy", "--lr=-1", "-2"], ["toy", "--lr=-1", "-2"]),          # already joined: left alone
    (["plot", "--", "-1,1"], ["plot", "--", "-1,1"]),              # after "--": left alone
    (["spectrum", "-h"], ["spectrum", "-h"]),
])
def test_negative_values_are_joined_to_their_option(argv, joined):
    assert join_negative_values(argv) == joined


def test_negative_range_parses_as_written():
    args = build_parser(["plot"]).parse_args(join_negative_values(["plot", "r", "--range", "-3,1"]))
    assert args.range == [-3.0, 1.0]


@pytest.mark.parametrize("n", [1, 4, _names.MAX_SIMULATED_DEVICES])
def test_simulated_device_counts_in_range_pass(n):
    _devices.check_device_args(argparse.Namespace(simulate_devices=n))


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_disk_full_message_names_the_file(tmp_path, code, words):
    err = OSError(code, os.strerror(code), str(tmp_path / "spectra.json"))
    line = disk_full_message(err, argparse.Namespace(command="spectrum", out="elsewhere"))
    assert line.startswith(f"{words} writing '{tmp_path / 'spectra.json'}' (")
    assert " free there)" in line and "run the command again" in line and "\n" not in line


def test_diagnose_without_a_variant_builds_the_default(tmp_path, capsys):
    assert main(["diagnose", "--width", "8", "--depth", "4", "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["model"], doc["variant"], doc["depth"]) == ("fc", "rezero", 4)


def _disk_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def _files(folder) -> dict:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def test_full_disk_writing_a_report_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "theory"
    monkeypatch.setattr(os, "fsync", _disk_full)  # as a full disk fails: at the write's fsync
    assert main(["theory", "--depth", "2", "--samples", "0", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"isometry theory: error: no space left on device writing into '{out}' ("), lines
    assert os.listdir(out) == []  # no half-written PNG, no temp file


def test_a_folder_in_the_way_of_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "theory.png").mkdir()  # where the figure goes
    assert main(["theory", "--depth", "2", "--samples", "0", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"isometry theory: error: Is a directory: '{tmp_path / 'theory.png'}'"]
    assert sorted(os.listdir(tmp_path)) == ["theory.png"]


TRAIN = ["train", "--depth", "2", "--width", "8", "--data", "synthetic:4x4x1", "--batch-size", "4",
         "--steps", "20", "--checkpoint-every", "10", "--track-every", "10", "--log-every", "5",
         "--probes", "2", "--no-progress"]


def test_full_disk_while_training_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    """The disk fills while the checkpoint of step 20 is written: one line, exit code 2, every
    file of the run directory as it was before that write, and --resume finishes the run."""
    from isometry.train import _checkpoint

    run, real_write, before = tmp_path / "run", _checkpoint.atomic_write, {}

    def atomic_write(path, data):
        if os.path.exists(path):  # the second checkpoint: the disk is full now
            before.update(_files(run))
            with monkeypatch.context() as m:
                m.setattr(os, "fsync", _disk_full)
                return real_write(path, data)
        return real_write(path, data)

    monkeypatch.setattr(_checkpoint, "atomic_write", atomic_write)
    assert main([*TRAIN, "--run-dir", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"isometry train: error: no space left on device writing into '{run}'")
    assert lines[0].endswith("run the same command with --resume")
    assert before and _files(run) == before, "a file changed (or a temp file stayed) after the failed write"
    assert int(np.load(run / "checkpoint.npz")["step"]) == 10

    monkeypatch.setattr(_checkpoint, "atomic_write", real_write)
    assert main([*TRAIN, "--run-dir", str(run), "--resume"]) == 0
    assert int(np.load(run / "checkpoint.npz")["step"]) == 20
    from isometry.train._tracking import read_metrics
    assert read_metrics(str(run))[-1]["step"] == 20
