"""`isometry train` and `isometry plot`: kill -9 mid-run, resume, and the same result."""

import os
import signal
import subprocess
import sys

import pytest
from helpers import last_step, wait_until

from isometry.cli import main
from isometry.train._tracking import read_metrics

ARGS = ["train", "--model", "fc", "--variant", "rezero", "--depth", "3", "--width", "8",
        "--data", "synthetic:2x2x3", "--batch-size", "8", "--lr", "0.05", "--steps", "400",
        "--track-every", "50", "--probes", "2", "--log-every", "1", "--checkpoint-every", "30",
        "--eval-every", "100", "--eval-batches", "2", "--x64", "--no-progress"]


def _checkpoint_step(run_dir):
    import numpy as np
    try:
        return int(np.load(os.path.join(run_dir, "checkpoint.npz"))["step"])
    except (OSError, KeyError, ValueError):
        return None


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    killed = str(tmp_path / "killed")
    metrics = os.path.join(killed, "metrics.jsonl")

    def records_past_a_checkpoint():  # kill after a checkpoint, with records written past it
        ckpt, last = _checkpoint_step(killed), last_step(metrics)
        return bool(ckpt) and last is not None and last > ckpt + 3

    proc = subprocess.Popen([sys.executable, "-m", "isometry", *ARGS, "--run-dir", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(records_past_a_checkpoint, proc, what="records past a checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    ckpt = _checkpoint_step(killed)
    assert 0 < ckpt < 400
    assert main([*ARGS, "--run-dir", killed, "--resume"]) == 0
    reference = str(tmp_path / "reference")
    assert main([*ARGS, "--run-dir", reference]) == 0

    resumed, uninterrupted = read_metrics(killed), read_metrics(reference)
    steps = [r["step"] for r in resumed]
    assert steps == sorted(set(steps)) == list(range(401))  # strictly increasing, none lost
    assert resumed == uninterrupted  # every record, the final metrics included
    assert resumed[-1]["eval_loss"] > 0 and "spectrum" in resumed[-1]
    assert sorted(os.listdir(os.path.join(killed, "spectra"))) == \
        sorted(os.listdir(os.path.join(reference, "spectra")))


def test_plot_writes_the_figures_and_config_mismatch_is_refused(tmp_path, capsys):
    run = str(tmp_path / "run")
    short = [a if a != "400" else "40" for a in ARGS]
    assert main([*short, "--run-dir", run, "--track-every", "10"]) == 0
    assert main(["plot", run]) == 0
    for name in ("loss.png", "spectra.png", "alpha.png", "chi.png"):
        assert os.path.getsize(os.path.join(run, name)) > 1000
    capsys.readouterr()
    assert main([*short, "--run-dir", run, "--track-every", "10", "--lr", "0.1", "--resume"]) == 2
    assert "other settings: train.lr: 0.05 there, 0.1 now;" in capsys.readouterr().err
    assert main([*short, "--run-dir", run, "--track-every", "10"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--variant", "rezero,plain"], "one --variant"),
    (["--data", "cifar10", "--data-path", "/nonexistent/cifar"], "CIFAR-10 not found"),
    (["--data", "text:/nonexistent.txt"], "text file not found"),
    (["--optimizer", "adam", "--warmup", "500"], "warmup"),
])
def test_usage_errors(tmp_path, capsys, extra, message):
    assert main([*ARGS, "--run-dir", str(tmp_path / "r"), *extra]) == 2
    assert message in capsys.readouterr().err
