"""A run that stops making progress says so and exits; the ResNet run that hung now finishes."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from isometry.train._tracking import read_metrics
from isometry.train._watchdog import STALL_EXIT_CODE, Watchdog


class _Exit:
    def __init__(self):
        self.codes, self.done = [], threading.Event()

    def __call__(self, code):
        self.codes.append(code)
        self.done.set()


def test_no_beat_for_the_timeout_ends_the_run_with_one_line(capsys):
    ended = _Exit()
    with Watchdog(0.5, lambda: "runs/a has a checkpoint of step 7", exit=ended) as dog:
        dog.beat("training step 8")
        assert ended.done.wait(10)
    assert ended.codes == [STALL_EXIT_CODE]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no progress for 0.5 s" in err[0]
    assert "while training step 8" in err[0] and "checkpoint of step 7" in err[0]


def test_beats_keep_it_quiet():
    ended = _Exit()
    with Watchdog(0.6, exit=ended) as dog:
        for i in range(8):
            dog.beat(f"training step {i}")
            time.sleep(0.2)
    assert ended.codes == []


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_a_negative_timeout_is_refused(timeout):
    with pytest.raises(ValueError, match="stall_timeout"):
        Watchdog(timeout)


def test_a_second_ctrl_c_inside_one_native_call_ends_it_at_once(capsys):
    """The loop's own handler only runs between Python bytecodes: inside a long native call it
    never sees Ctrl-C. Two presses during one beat end the process (130); one press followed by
    progress does not (the loop saw it and stops after its step)."""
    ended = _Exit()
    previous = signal.signal(signal.SIGINT, lambda *a: None)  # the loop's first-press handler
    try:
        with Watchdog(None, exit=ended) as dog:
            dog.beat("recording step 3 (its Jacobian spectrum)")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
            dog.beat("writing the checkpoint of step 3")  # progress after the first press
            time.sleep(1.0)
            assert ended.codes == []
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.7)
            os.kill(os.getpid(), signal.SIGINT)
            assert ended.done.wait(10)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ended.codes == [130]
    assert "second Ctrl-C inside a native call while writing the checkpoint" in capsys.readouterr().err


_HANGING_RUN = textwrap.dedent("""
    import sys, time
    from flax import nnx
    import isometry.data as data, models
    from isometry.train import TrainConfig, train
    ds = data.load_data("synthetic:2x2x3")
    real = ds.train_batch
    def train_batch(seed, step, size):  # step 5 never returns, as a deadlocked native call
        if step == 5:
            time.sleep(600)
        return real(seed, step, size)
    ds.train_batch = train_batch
    net = models.FullyConnected(2, 8, in_features=12, out_features=ds.task.num_classes,
                                rngs=nnx.Rngs(0))
    train(net, ds, TrainConfig(steps=20, batch_size=4, lr=0.01, checkpoint_every=4),
          run_dir=sys.argv[1], input_shape=(12,), probes=2, log_every=1, progress=False,
          stall_timeout=30)  # above the first step's compilation, even on a loaded machine
""")


def test_a_hanging_run_says_where_it_stopped_and_exits(tmp_path):
    run_dir = str(tmp_path / "run")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _HANGING_RUN, run_dir], capture_output=True,
                          text=True, timeout=300)
    assert time.monotonic() - start < 200
    assert proc.returncode == STALL_EXIT_CODE, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "no progress for 30 s" in line and "while training step 6" in line
    assert "checkpoint of step 4" in line and "--resume" in line
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(6))  # nothing torn


@pytest.mark.parametrize("probes,size", [(2, 24), (4, 24), (8, 32)])
def test_the_resnet_run_that_deadlocked_finishes(tmp_path, probes, size):
    """`isometry train --model resnet --variant rezero --depth 8` hung at step 0 (two batched
    LAPACK SVDs at once on the CPU): here with --steps 1 (the spectra of step 0 and step 1);
    the default 32x32 images with the default 8 probes, 24x24 (still 9,216 dimensions, so
    matrix-free as at 32x32; the time halves) with 2 and 4 probes. All hung before."""
    cmd = [sys.executable, "-m", "isometry", "train", "--model", "resnet", "--variant", "rezero",
           "--depth", "8", "--steps", "1", "--probes", str(probes),
           "--data", f"synthetic:{size}x{size}x3", "--no-progress", "--run-dir", str(tmp_path / "run")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd[2:])} did not finish in 400 s: it hangs (the CPU LAPACK "
                    f"deadlock is back?)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records if "spectrum" in r] == [0, 1]
    assert records[0]["spectrum"]["engine"] == "lanczos"
