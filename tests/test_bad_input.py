"""Bad input, broken files and interrupted runs, tried as a new user would (issue 17).

Two tables. `API_CASES`: a call that must either raise a clear exception (type and words) or
return the right number where it used to return a wrong one quietly. `CLI_CASES`: a command
line run through the console script `isometry` that must exit with code 2 and one line on
stderr (no traceback) naming the problem, leaving every file that was there unchanged. A new
case is one line in a table.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import warnings
import zipfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from helpers import last_step, wait_until
from isometry import data as datasets

# --- helpers ---------------------------------------------------------------------------------

ISOMETRY = shutil.which("isometry") or os.path.join(os.path.dirname(sys.executable), "isometry")
TRAIN = ("train --depth 2 --width 8 --data synthetic:4x4x1 --batch-size 4 --track-every 10 "
         "--log-every 5 --probes 2 --steps 20 --checkpoint-every 10 --no-progress").split()


def isometry_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    return subprocess.run([ISOMETRY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under `folder` (to check nothing changed)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def fc_net(depth=4, width=16, seed=0, dtype=jnp.float64):
    return models.FullyConnected(depth, width, variant="plain", param_dtype=dtype,
                                 rngs=nnx.Rngs(seed))


def gaussian(shape, seed=1, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# --- API cases: each returns normally when right, or raises what the table says ---------------

def doubled_weights_are_seen():
    net = fc_net()
    x = gaussian((16,))
    fn = lambda v: net(v)  # noqa: E731  (the same lambda object both times)
    before = iso.jacobian_spectrum(fn, x).chi
    state = nnx.state(net, nnx.Param)  # every weight matrix doubled, in place
    nnx.update(net, jax.tree_util.tree_map_with_path(
        lambda path, a: 2 * a if "kernel" in jax.tree_util.keystr(path) else a, state))
    after = iso.jacobian_spectrum(fn, x).chi
    apply_fn, params = iso.from_nnx(net)
    truth = iso.spectrum_fn(apply_fn, "dense")(params, x).chi
    np.testing.assert_allclose(after, truth, rtol=1e-10)
    assert float(after) > 100 * float(before)  # ReLU net of depth 4: 2^(2·4) times larger


def captured_array_mutated_in_a_holder():
    holder = {"w": jnp.diag(jnp.array([3.0, 2.0, 1.0], jnp.float64))}
    fn = lambda v: holder["w"] @ v  # noqa: E731
    np.testing.assert_allclose(iso.jacobian_spectrum(fn, jnp.ones(3)).singular_values, [3, 2, 1])
    holder["w"] = holder["w"] * 5
    np.testing.assert_allclose(iso.jacobian_spectrum(fn, jnp.ones(3)).singular_values, [15, 10, 5])


def nan_parameter_in_relu_net():
    net = fc_net()
    apply_fn, params = iso.from_nnx(net)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a.at[(0,) * a.ndim].set(jnp.nan) if "kernel" in jax.tree_util.keystr(path)
        else a, params)
    iso.spectrum_fn(apply_fn, "dense")(params, gaussian((16,)))


def inf_parameter_in_relu_net():
    net = fc_net()
    apply_fn, params = iso.from_nnx(net)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a * jnp.inf if "kernel" in jax.tree_util.keystr(path) else a, params)
    iso.spectrum_fn(apply_fn, "dense", batched=True)(params, gaussian((2, 16)))


def from_linen_with_mutable_batch_stats():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)  # the inputs' dtype
            return nn.BatchNorm(use_running_average=not train, **f64)(nn.Dense(6, **f64)(x))

    module = Net()
    x = gaussian((5, 6))
    with jax.numpy_dtype_promotion("standard"):  # flax's BatchNorm mixes dtypes internally
        variables = module.init(jax.random.key(0), x, train=False)
    apply_fn, params = iso.from_linen(module, variables, train=True, mutable=["batch_stats"])
    with jax.numpy_dtype_promotion("standard"):  # flax's BatchNorm mixes dtypes internally
        chi = iso.spectrum_fn(apply_fn)(params, x).chi
        jac = jax.jacfwd(lambda v: module.apply(variables, v, train=True,
                                                mutable=["batch_stats"])[0])(x)
    np.testing.assert_allclose(chi, np.sum(np.asarray(jac) ** 2) / x.size, rtol=1e-8)


def nnx_batchnorm_in_train_mode():
    class Net(nnx.Module):
        def __init__(self, rngs):
            f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)  # the inputs' dtype
            self.linear = nnx.Linear(4, 4, **f64, rngs=rngs)
            self.bn = nnx.BatchNorm(4, **f64, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.linear(x))

    apply_fn, params = iso.from_nnx(Net(nnx.Rngs(0)))  # train mode: BatchNorm updates its stats
    with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
        # flax's BatchNorm mixes dtypes internally, and its train-mode update of the running
        # statistics casts float64 into them (a FutureWarning of jax); our error comes after
        warnings.filterwarnings("ignore", "scatter inputs have incompatible types", FutureWarning)
        iso.spectrum_fn(apply_fn, batched=True)(params, gaussian((3, 4)))


def sharded_on_an_unbatched_input():
    apply_fn, params = iso.from_nnx(fc_net())
    iso.sharded_spectrum_fn(apply_fn)(params, gaussian((16,)))


def int_key_is_a_seed():
    apply_fn, params = iso.from_nnx(fc_net())
    sfn = iso.spectrum_fn(apply_fn, "lanczos", k=3)
    x = gaussian((16,))
    np.testing.assert_allclose(sfn(params, x, 3).chi, sfn(params, x, jax.random.key(3)).chi)


def string_key():
    apply_fn, params = iso.from_nnx(fc_net())
    iso.spectrum_fn(apply_fn, "lanczos", k=3)(params, gaussian((16,)), "seed")


def float16_inputs_are_upcast_for_the_svd():
    w = gaussian((6, 6), seed=2)
    x = jnp.ones(6, jnp.float16)
    with pytest.warns(UserWarning, match="computed in float32"):
        s16 = iso.jacobian_spectrum(lambda v: (w.astype(jnp.float16) @ v), x).singular_values
    s = np.linalg.svd(np.asarray(w.astype(jnp.float16), np.float64), compute_uv=False)
    np.testing.assert_allclose(np.asarray(s16, np.float64), s, rtol=1e-5)


def all_zero_jacobian_statistics():
    spec = iso.jacobian_spectrum(lambda v: 0.0 * v, jnp.ones(4))
    assert float(spec.mean_log) == -np.inf and float(spec.zero_share) == 1.0
    assert np.isnan(float(spec.std_log)) and float(spec.resolution) == 0.0


def zeros_are_left_out_of_log_statistics_and_histograms():
    s = jnp.array([2.0, 0.5, 0.0, 0.0], jnp.float64)
    spec = iso.Spectrum.from_singular_values(s, 4, 4)
    np.testing.assert_allclose(spec.mean_log, np.mean(np.log([2.0, 0.5])), atol=1e-15)
    assert float(spec.zero_share) == 0.5
    counts, edges = spec.histogram(bins=3, density=False)
    assert counts.sum() == 2 and edges[0] == np.log10(0.5) and edges[-1] == np.log10(2.0)


def share_below_resolution_by_dtype():
    s = np.array([1.0, 0.5, 1e-12, 1e-13])
    for dtype, share in ((np.float32, 0.5), (np.float64, 0.0)):
        spec = iso.Spectrum.from_singular_values(jnp.asarray(s, dtype), 4, 4)
        assert float(spec.zero_share) == share, dtype


def truncated_zip_is_not_a_corpus(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", bytes(range(256)) * 400)
    path = tmp_path / "enwik8.zip"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    datasets.load_data("enwik8", path=str(path), seq_len=8)


def gzip_with_garbage_after_the_header(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(bad_targz_bytes())
    datasets.load_cifar10(str(path))


def strict_json_with_reasons():
    text = iso._io.json_text({"loss": float("nan"), "s": np.array([1.0, np.inf])})
    assert json.loads(text) == {"loss": None, "loss_nonfinite": "nan", "s": [1.0, None],
                                "s_nonfinite": "1 of 2 values non-finite (inf), written as null"}


def tracker_writes_strict_json(tmp_path):
    with iso.Tracker(str(tmp_path)) as t:
        t.update(1, loss=float("nan"))
        t.update(2, loss=float("inf"), grad_norm=np.float32(1.5))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}")) for line in lines]
    assert records[0]["loss"] is None and records[0]["loss_nonfinite"] == "nan"
    assert records[1]["loss_nonfinite"] == "inf" and records[1]["grad_norm"] == 1.5


def files_are_group_readable(tmp_path):
    old = os.umask(0o022)
    try:
        iso._io.write_json(tmp_path / "a.json", {"a": 1})
        from isometry import plot
        import matplotlib.pyplot as plt
        plot.save(plt.figure(), tmp_path / "a.png")
    finally:
        os.umask(old)
    for name in ("a.json", "a.png"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o644", name


def linear(v):
    return 2.0 * v


@dataclasses.dataclass(frozen=True)
class ApiCase:
    id: str
    call: Callable
    raises: type | None = None  # None: must return normally (its own asserts check the number)
    match: str = ""


API_CASES = [
    ApiCase("closure-nnx-weights-doubled", doubled_weights_are_seen),
    ApiCase("closure-array-replaced", captured_array_mutated_in_a_holder),
    ApiCase("nan-parameter-relu", nan_parameter_in_relu_net, FloatingPointError, "output has"),
    ApiCase("inf-parameter-relu-batched", inf_parameter_in_relu_net, FloatingPointError, "output has"),
    ApiCase("log-of-negative", lambda: iso.jacobian_spectrum(lambda v: jnp.log(v - 2), jnp.ones(3)),
            FloatingPointError, "output has 3 non-finite"),
    ApiCase("nan-input", lambda: iso.jacobian_spectrum(linear, jnp.array([1.0, jnp.nan])),
            FloatingPointError, "input has 1 non-finite"),
    ApiCase("from-linen-mutable", from_linen_with_mutable_batch_stats),
    ApiCase("dense-jacobian-too-large", lambda: iso.dense_jacobian(jnp.tanh, jnp.ones(300_000)),
            iso.JacobianTooLargeError, "memory budget"),
    ApiCase("empty-input", lambda: iso.jacobian_spectrum(jnp.tanh, jnp.ones(0)), ValueError,
            "input is empty"),
    ApiCase("empty-input-dense-jacobian", lambda: iso.dense_jacobian(jnp.tanh, jnp.ones((3, 0))),
            ValueError, "input is empty"),
    ApiCase("empty-batch", lambda: iso.jacobian_spectrum(jnp.tanh, jnp.ones((0, 3)), batched=True),
            ValueError, "batch is empty"),
    ApiCase("empty-batch-spectrum-fn",
            lambda: iso.spectrum_fn(lambda p, v: p * v, batched=True)(2.0, jnp.ones((0, 3))),
            ValueError, "batch is empty"),
    ApiCase("float16-input", float16_inputs_are_upcast_for_the_svd),
    ApiCase("nnx-batchnorm-train-mode", nnx_batchnorm_in_train_mode, ValueError, r"module.eval\(\)"),
    ApiCase("sharded-unbatched", sharded_on_an_unbatched_input, ValueError, r"x\[None\]"),
    ApiCase("int-key", int_key_is_a_seed),
    ApiCase("string-key", string_key, TypeError, "PRNG key"),
    ApiCase("from-nnx-not-a-module", lambda: iso.from_nnx(lambda v: v), TypeError,
            "takes a flax.nnx.Module"),
    ApiCase("all-zero-jacobian", all_zero_jacobian_statistics),
    ApiCase("zeros-in-log-statistics", zeros_are_left_out_of_log_statistics_and_histograms),
    ApiCase("below-resolution-share", share_below_resolution_by_dtype),
    ApiCase("truncated-enwik8-zip", truncated_zip_is_not_a_corpus, datasets.DataError,
            "looks like a zip archive"),
    ApiCase("gzip-garbage", gzip_with_garbage_after_the_header, datasets.DataError, "unreadable"),
    ApiCase("strict-json", strict_json_with_reasons),
    ApiCase("tracker-strict-json", tracker_writes_strict_json),
    ApiCase("files-0644", files_are_group_readable),
]


# --- issue 31: every numeric setting has a range, a setting that does not apply is an error ---

def _fc_fn():
    return iso.from_nnx(fc_net(depth=2, width=8))


def wrong_input_shape():
    apply_fn, params = _fc_fn()
    iso.spectrum_fn(apply_fn)(params, gaussian((5,)))


def resnet_in_train_mode_to_diagnose():
    net = models.ResNet(depth=8, variant="rezero", param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    net.train()
    iso.diagnose(net, gaussian((8, 8, 3)))


def from_linen_without_variables():
    import flax.linen as nn
    apply_fn, params = iso.from_linen(nn.Dense(3), {})
    iso.spectrum_fn(apply_fn)(params, jnp.ones(4))


def a_long_sequence_is_refused_before_it_runs():
    net = models.Transformer(2, 16, heads=2, ffn=32, rngs=nnx.Rngs(0))
    net.eval()
    _, states_fn, params = iso.from_stack(net)
    sfn = iso.spectrum_fn(lambda p, x0: states_fn(p, x0)[-1], "lanczos", k=2)
    sfn(params, jnp.ones((20_000, 16), jnp.float32))  # attention: 20,000² per head and layer


def negative_token_id():
    lm = models.Transformer(2, 8, heads=2, ffn=16, vocab_size=256, causal=True, rngs=nnx.Rngs(0))
    lm(jnp.array([[3, -5, 7]]))


def any_file_as_enwik8(tmp_path):
    (tmp_path / "enwik8").write_bytes(b"PK-less plain bytes, not the Wikipedia dump " * 100)
    datasets.load_data("enwik8", path=str(tmp_path / "enwik8"), seq_len=8)


def alpha_lr_without_alpha():
    from isometry.train import TrainConfig, make_optimizer
    _, params = iso.from_nnx(fc_net(depth=2, width=8))
    make_optimizer(TrainConfig(steps=10, alpha_lr=0.1), params)


def matrix_free_mean_log_is_a_bound_not_minus_518():
    """A plain ReLU net of width 8 has σ = 0 directions; float64 resolves them no better than
    the engine's σ_max·ε·n: those σ are zero_share, mean ln σ is over the rest, never ln of
    round-off."""
    apply_fn, params = iso.from_nnx(fc_net(depth=4, width=8))
    x = gaussian((8,))
    spec = iso.spectrum_fn(apply_fn, "lanczos", k=4)(params, x, jax.random.key(0))
    dense = iso.spectrum_fn(apply_fn, "dense")(params, x)
    assert float(dense.zero_share) > 0.5 and float(spec.zero_share) > 0.5
    assert float(spec.mean_log) >= math.log(float(spec.resolution)) - 1e-9 > -100


def tracker_bad_bins_leaves_the_run_dir_as_it_was(tmp_path):
    run = tmp_path / "run"
    with iso.Tracker(str(run), apply_fn=lambda p, v: p * v, probes=jnp.ones((2, 3)), every=1) as t:
        t.update(0, 2.0, loss=1.0)
    before = snapshot(run)
    try:
        iso.Tracker(str(run), apply_fn=lambda p, v: p * v, probes=jnp.ones((2, 3)), bins=0,
                    resume_step=0)
    finally:
        assert snapshot(run) == before


def train_config(**settings):
    from isometry.train import TrainConfig
    return lambda: TrainConfig(**{"steps": 100, **settings})


def spectrum_fn_setting(**settings):
    return lambda: iso.spectrum_fn(lambda p, v: p * v, **settings)


def lanczos_setting(**settings):
    return lambda: iso.lanczos_spectrum(linear, jnp.ones(8), jax.random.key(0), **settings)


API_CASES += [
    ApiCase("chunk-size-negative", spectrum_fn_setting(chunk_size=-2), ValueError, "chunk_size"),
    ApiCase("chunk-size-zero-dense-jacobian", lambda: iso.dense_jacobian(jnp.tanh, jnp.ones(3), chunk_size=0),
            ValueError, "chunk_size"),
    ApiCase("memory-budget-zero", spectrum_fn_setting(memory_budget=0), ValueError, "memory_budget"),
    ApiCase("auto-dense-max-dim-zero", spectrum_fn_setting(max_dense_dim=0), ValueError,
            "max_dense_dim"),
    ApiCase("lanczos-option-typo", spectrum_fn_setting(method="lanczos", blok_size=4), TypeError,
            "no setting 'blok_size'"),
    ApiCase("rtol-zero", lanczos_setting(rtol=0.0), ValueError, r"rtol must be in \(0, 1\)"),
    ApiCase("rtol-above-one", lambda: iso.top_singular_values(linear, jnp.ones(8), k=1, rtol=2.0),
            ValueError, "rtol"),
    ApiCase("max-steps-zero", lanczos_setting(max_steps=0), ValueError, "max_steps"),
    ApiCase("num-probes-zero", lanczos_setting(num_probes=0), ValueError, "num_probes"),
    ApiCase("num-steps-float", lanczos_setting(num_steps=2.5), ValueError, "num_steps must be an integer"),
    ApiCase("chi-probes-negative", lanczos_setting(chi_probes=-1), ValueError, "chi_probes"),
    ApiCase("wrong-input-shape", wrong_input_shape, ValueError, r"does not take an input float64\[5\]"),
    ApiCase("from-linen-empty-variables", from_linen_without_variables, ValueError,
            "lack a collection"),
    ApiCase("resnet-train-mode-diagnose", resnet_in_train_mode_to_diagnose, ValueError,
            r"train mode.*module.eval\(\)"),
    ApiCase("long-sequence-memory", a_long_sequence_is_refused_before_it_runs, MemoryError,
            "GiB free"),
    ApiCase("negative-token-id", negative_token_id, ValueError, r"token ids must lie in 0..255"),
    ApiCase("byte-tokens-negative", lambda: datasets.ByteCorpus("t", np.array([1, -5, 3] * 50), 4),
            datasets.DataError, "0..255"),
    ApiCase("not-enwik8", any_file_as_enwik8, datasets.DataError, "is not enwik8"),
    ApiCase("momentum-5", train_config(optimizer="sgd", momentum=5.0), ValueError, r"momentum must be in \[0, 1\)"),
    ApiCase("weight-decay-negative", train_config(weight_decay=-1e-4), ValueError, "weight_decay"),
    ApiCase("step-schedule-without-steps", train_config(schedule="step"), ValueError,
            "step schedule needs decay_steps"),
    ApiCase("decay-steps-without-step-schedule", train_config(decay_steps=(50,)), ValueError,
            "apply to the step schedule only"),
    ApiCase("decay-factor-zero", train_config(schedule="step", decay_steps=(5,), decay_factor=0.0),
            ValueError, "decay_factor"),
    ApiCase("seed-negative", train_config(seed=-1), ValueError, "seed"),
    ApiCase("eval-batches-zero", train_config(eval_batches=0), ValueError, "eval_batches"),
    ApiCase("alpha-init-plain", lambda: models.FullyConnected(2, 8, variant="plain", alpha_init=0.5,
                                                              rngs=nnx.Rngs(0)),
            ValueError, "has no α"),
    ApiCase("alpha-init-postnorm-transformer", lambda: models.Transformer(
        2, 8, heads=2, ffn=16, variant="postnorm", alpha_init=1.0, rngs=nnx.Rngs(0)), ValueError, "has no α"),
    ApiCase("alpha-lr-without-alpha", alpha_lr_without_alpha, ValueError, "has no α"),
    ApiCase("matrix-free-mean-log-bound", matrix_free_mean_log_is_a_bound_not_minus_518),
    ApiCase("tracker-bins-0", tracker_bad_bins_leaves_the_run_dir_as_it_was, ValueError, "bins"),
    ApiCase("tracker-range-reversed", lambda: iso.Tracker("unused", hist_range=(3.0, -6.0)),
            ValueError, "lo < hi"),
    ApiCase("diagnose-burn-in-negative", lambda: iso.diagnose(fc_net(2, 8), gaussian((8,)), burn_in=-1),
            ValueError, "burn_in"),
    ApiCase("tune-init-no-seeds", lambda: iso.tune_init(lambda sigma_w2, rngs: fc_net(2, 8), "sigma_w2",
                                                        gaussian((8,)), defaults={"sigma_w2": 2.0}, seeds=()),
            ValueError, "seeds"),
    ApiCase("tune-init-xtol-zero", lambda: iso.tune_init(lambda sigma_w2, rngs: fc_net(2, 8), "sigma_w2",
                                                         gaussian((8,)), defaults={"sigma_w2": 2.0}, xtol=0.0),
            ValueError, "xtol"),
    ApiCase("stall-timeout-negative", lambda: __import__("isometry.train._watchdog", fromlist=["x"])
            .Watchdog(-5.0), ValueError, "stall_timeout"),
    ApiCase("train-track-every-zero", lambda: __import__("isometry.train", fromlist=["x"]).train(
        fc_net(2, 8), None, None, track_every=0), ValueError, "track_every"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api(case, tmp_path):
    call = (lambda: case.call(tmp_path)) if case.call.__code__.co_argcount else case.call
    if case.raises is None:
        call()
    else:
        with pytest.raises(case.raises, match=case.match):
            call()


# --- CLI cases: exit code 2, one line, files unchanged ----------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 20-step run directory (copied, then broken, by the cases)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = isometry_cli(*TRAIN, "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    return run


def _copy(run, tmp):
    dest = tmp / "run"
    shutil.copytree(run, dest)
    return dest


def truncate(name, keep: float):
    def prepare(run):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return prepare


def flip_a_bit(name):
    """Flips one bit in the middle of the largest array's bytes of an .npz (not in a header)."""
    def prepare(run):
        data = bytearray((run / name).read_bytes())
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            info = max(z.infolist(), key=lambda i: i.file_size)
        at = info.header_offset
        start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + \
            int.from_bytes(data[at + 28:at + 30], "little")
        data[start + info.compress_size // 2] ^= 0x10
        (run / name).write_bytes(bytes(data))
    return prepare


def remove(name):
    return lambda run: os.remove(run / name)


def corrupt_middle_line(run):
    lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
    lines[1] = lines[1][: len(lines[1]) // 2]
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines))


def cut_metrics_in_half(run):  # whole lines gone: the last one is complete, not torn
    lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines[:2]) + b"\n")


def write(name, data: bytes):
    def prepare(folder):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return prepare


def truncated_zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", os.urandom(50_000))
    return buf.getvalue()[:30_000]


def bad_targz_bytes():
    """A .tar.gz whose gzip header and first blocks are valid, then garbage (zlib.error)."""
    rng = np.random.default_rng(0)
    payload = bytes(rng.integers(97, 113, 300_000, dtype=np.uint8))  # compressible: Huffman blocks
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    cut = len(data) // 2
    return data[:cut] + bytes(rng.integers(0, 256, len(data) - cut, dtype=np.uint8))


@dataclasses.dataclass(frozen=True)
class CliCase:
    id: str
    args: tuple  # "{dir}" is the case's folder, "{run}" a copy of a finished run in it
    match: str  # words the one line must hold
    prepare: Callable | None = None  # prepare(run or dir) before the command
    needs_run: bool = False


FILE = "{dir}/a-file"
CLI_CASES = [
    CliCase("spectrum-bins-0", ("spectrum", "--bins", "0", "--out", "{dir}/o"), "--bins must be at least 1"),
    CliCase("spectrum-empty-depth", ("spectrum", "--depth", "", "--out", "{dir}/o"), "--depth needs at least one"),
    CliCase("spectrum-k-too-large", ("spectrum", "--method", "lanczos", "--width", "8", "--k", "20",
                                     "--out", "{dir}/o"), "--k 20 is more than the 8"),
    CliCase("spectrum-out-is-a-file", ("spectrum", "--out", FILE), "is a file, not a folder",
            write("a-file", b"x")),
    CliCase("spectrum-out-parent-is-a-file", ("spectrum", "--out", FILE + "/sub"), "Not a directory",
            write("a-file", b"x")),
    CliCase("spectrum-out-read-only", ("spectrum", "--out", "/proc/self"), "not a writable folder"),
    CliCase("toy-out-is-a-file", ("toy", "--out", FILE), "is a file", write("a-file", b"x")),
    CliCase("theory-out-is-a-file", ("theory", "--out", FILE), "is a file", write("a-file", b"x")),
    CliCase("reproduce-out-is-a-file", ("reproduce", "fig2", "--scale", "smoke", "--out", FILE),
            "is a file", write("a-file", b"x")),
    CliCase("plot-out-is-a-file", ("plot", "{run}", "--out", "{run}/config.json"), "is a file",
            needs_run=True),
    CliCase("train-run-dir-is-a-file", (*TRAIN, "--run-dir", FILE), "is a file", write("a-file", b"x")),
    CliCase("train-steps-0", (*TRAIN, "--steps", "0", "--run-dir", "{dir}/r"), "steps and batch_size must be positive"),
    CliCase("train-probes-negative", (*TRAIN, "--probes", "-1", "--run-dir", "{dir}/r"), "--probes must be 0"),
    CliCase("resume-missing-dir", (*TRAIN, "--resume", "--run-dir", "{dir}/nothing"), "nothing to resume"),
    CliCase("resume-not-a-run-dir", (*TRAIN, "--resume", "--run-dir", "{dir}"), "holds no config.json"),
    CliCase("resume-checkpoint-gone", (*TRAIN, "--resume", "--run-dir", "{run}"), "no checkpoint.npz",
            remove("checkpoint.npz"), True),
    CliCase("resume-checkpoint-truncated", (*TRAIN, "--resume", "--run-dir", "{run}"), "is corrupt",
            truncate("checkpoint.npz", 0.5), True),
    CliCase("resume-checkpoint-empty", (*TRAIN, "--resume", "--run-dir", "{run}"), "checkpoint",
            truncate("checkpoint.npz", 0.0), True),
    CliCase("resume-checkpoint-bit-flip", (*TRAIN, "--resume", "--run-dir", "{run}"), "checkpoint",
            flip_a_bit("checkpoint.npz"), True),
    CliCase("resume-config-corrupt", (*TRAIN, "--resume", "--run-dir", "{run}"), "config.json is corrupt",
            truncate("config.json", 0.5), True),
    CliCase("resume-metrics-middle-line", (*TRAIN, "--resume", "--run-dir", "{run}"), "line 2 is not valid JSON",
            corrupt_middle_line, True),
    CliCase("resume-metrics-cut-in-half", (*TRAIN, "--resume", "--run-dir", "{run}"), "would leave a hole",
            cut_metrics_in_half, True),
    CliCase("resume-other-lr", (*TRAIN, "--lr", "0.02", "--resume", "--run-dir", "{run}"),
            "train.lr: 0.01 there, 0.02 now; resume", needs_run=True),
    CliCase("resume-fewer-steps-than-done", (*TRAIN, "--steps", "10", "--resume", "--run-dir", "{run}"),
            "past the 10 steps", needs_run=True),
    CliCase("start-over-a-run", (*TRAIN, "--run-dir", "{run}"), "already holds a run", needs_run=True),
    CliCase("train-truncated-enwik8-zip", (*TRAIN, "--model", "transformer", "--data", "enwik8",
                                           "--data-path", "{dir}/enwik8.zip", "--run-dir", "{dir}/r"),
            "looks like a zip archive", write("enwik8.zip", truncated_zip_bytes())),
    CliCase("train-cifar-gzip-garbage", (*TRAIN, "--data", "cifar10", "--data-path",
                                         "{dir}/cifar-10-python.tar.gz", "--run-dir", "{dir}/r"),
            "unreadable", write("cifar-10-python.tar.gz", bad_targz_bytes())),
    CliCase("reproduce-fig7-truncated-enwik8", ("reproduce", "fig7", "--scale", "smoke", "--data-dir",
                                                "{dir}/data", "--out", "{dir}/o"),
            "looks like a zip archive", write("data/enwik8.zip", truncated_zip_bytes())),
    CliCase("plot-corrupt-metrics", ("plot", "{run}"), "not valid JSON", corrupt_middle_line, True),
    # issue 31: numeric settings out of range, settings that do not apply
    CliCase("train-momentum-5", (*TRAIN, "--optimizer", "sgd", "--momentum", "5", "--run-dir", "{dir}/r"),
            "momentum must be in [0, 1)"),
    CliCase("train-weight-decay-negative", (*TRAIN, "--weight-decay", "-1", "--run-dir", "{dir}/r"),
            "weight_decay must be >= 0"),
    CliCase("train-step-schedule-without-steps", (*TRAIN, "--schedule", "step", "--run-dir", "{dir}/r"),
            "the step schedule needs decay_steps"),
    CliCase("train-decay-steps-constant", (*TRAIN, "--decay-steps", "5", "--run-dir", "{dir}/r"),
            "decay_steps apply to the step schedule only"),
    CliCase("train-seed-negative", (*TRAIN, "--seed", "-3", "--run-dir", "{dir}/r"), "seed must be >= 0"),
    CliCase("train-not-enwik8", (*TRAIN, "--model", "transformer", "--data", "enwik8", "--data-path",
                                 "{dir}/enwik8", "--run-dir", "{dir}/r"),
            "is not enwik8", write("enwik8", b"plain text, not the Wikipedia dump\n" * 200)),
    CliCase("spectrum-long-sequence", ("spectrum", "--model", "transformer", "--variant", "rezero",
                                       "--depth", "2", "--d-model", "16", "--heads", "2", "--ffn", "32",
                                       "--seq-len", "20000", "--method", "lanczos", "--k", "2",
                                       "--out", "{dir}/o"), "GiB free"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli(case, tmp_path, request):
    run = None
    if case.needs_run:
        run = _copy(request.getfixturevalue("finished_run"), tmp_path)
    if case.prepare is not None:
        case.prepare(run if case.needs_run else tmp_path)
    before = snapshot(tmp_path)
    args = [a.replace("{dir}", str(tmp_path)).replace("{run}", str(run)) for a in case.args]
    proc = isometry_cli(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert case.match in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file changed"
    assert not [k for k in after if k not in before and k.endswith("config.json")], \
        "a failed start left a config.json"


# --- runs that must work: the fixes' positive side ---------------------------------------------

def test_a_failed_start_leaves_nothing_that_refuses_the_corrected_command(tmp_path):
    run = tmp_path / "r"
    assert isometry_cli(*TRAIN, "--probes", "-1", "--run-dir", run).returncode == 2
    proc = isometry_cli(*TRAIN, "--run-dir", run)
    assert proc.returncode == 0, proc.stderr


def test_resume_extends_a_run_and_changes_its_intervals(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    proc = isometry_cli(*TRAIN, "--steps", "30", "--checkpoint-every", "7", "--eval-every", "5",
                        "--resume", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    steps = [r["step"] for r in iso.read_metrics(str(run))]
    assert steps == sorted(set(steps)) and steps[-1] == 30 and 25 in steps
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 30 and config["train"]["checkpoint_every"] == 7
    assert int(np.load(run / "checkpoint.npz")["step"]) == 30


def test_ctrl_c_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "r"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    args = [ISOMETRY, *TRAIN, "--steps", "1000000", "--checkpoint-every", "1000000", "--run-dir", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    try:  # records of steps 0, 5 and 10 on disk: at least 10 steps done
        wait_until(lambda: (last_step(metrics) or 0) >= 10, proc, what="the record of step 10")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    step = int(np.load(run / "checkpoint.npz")["step"])
    assert step >= 10 and f"stopped at step {step}; continue with --resume" in lines[0]
    last = iso.read_metrics(str(run))[-1]["step"]
    assert step - 5 < last <= step  # every record up to the checkpoint is on disk
    proc = isometry_cli(*TRAIN, "--steps", str(step + 7), "--checkpoint-every", "1000000",
                        "--resume", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    assert iso.read_metrics(str(run))[-1]["step"] == step + 7


def test_spectrum_records_the_engine_and_matrix_free_estimates(tmp_path):
    proc = isometry_cli("spectrum", "--method", "lanczos", "--width", "8", "--depth", "3",
                        "--variant", "residual", "--samples", "2", "--x64", "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == json.loads((tmp_path / "spectra.json").read_text())  # one shape for both
    (record,) = doc["records"]
    assert record["method"] == "lanczos" and record["engine"] == "lanczos"
    assert len(record["top_singular_values"]) == 2 and len(record["top_singular_values"][0]) == 8
    assert len(record["error_bounds"][0]) == 8 and len(record["converged"]) == 2
    assert len(record["chi_stderr"]) == 2 and "upper bound" in record["estimates"]["sigma_min"]
    assert "<=" in proc.stderr  # the table marks the bound


def test_auto_method_says_which_engine_ran(tmp_path):
    proc = isometry_cli("spectrum", "--method", "auto", "--width", "8", "--depth", "2",
                        "--variant", "plain", "--samples", "1", "--out", tmp_path, "--json")
    (record,) = json.loads(proc.stdout)["records"]
    assert record["method"] == "auto" and record["engine"] == "dense" and "singular_values" in record


def test_precision_warning_and_same_seed_with_x64(tmp_path):
    args = ("spectrum", "--variant", "plain", "--depth", "24", "--width", "48", "--samples", "2",
            "--json")
    f32 = isometry_cli(*args, "--out", tmp_path / "a")
    f64 = isometry_cli(*args, "--x64", "--out", tmp_path / "b")
    assert f32.returncode == 0 and f64.returncode == 0, f32.stderr + f64.stderr
    assert "below float32 resolution" in f32.stderr and "--x64" in f32.stderr
    (r32,), (r64,) = json.loads(f32.stdout)["records"], json.loads(f64.stdout)["records"]
    assert r32["dtype"] == "float32" and r64["dtype"] == "float64"
    assert r32["zero_share"] > r64["zero_share"]
    # the same weights and inputs: the well-resolved statistics agree to float32 precision
    np.testing.assert_allclose(r32["sigma_max"], r64["sigma_max"], rtol=1e-4)
    np.testing.assert_allclose(r32["chi"], r64["chi"], rtol=1e-4)
    assert r32["mean_log"] > r64["mean_log"] + 1  # float32 leaves more small σ out (zero_share)
