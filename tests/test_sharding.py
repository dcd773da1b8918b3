"""Spectra as one SPMD program over a device mesh.

Simulated CPU devices must be configured before jax starts its backend, so every multi-device
check runs in a fresh subprocess (8 simulated devices; two processes for `jax.distributed`).
Tolerances: float64 throughout; 1e-10 for batch sharding (the same per-input arithmetic), 1e-8
for a tensor-parallel model (XLA sums partial matmuls in another order).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import isometry as iso
import models
from helpers import last_step, wait_until
from isometry.train._tracking import read_metrics

HEADER = """
import jax, jax.numpy as jnp, numpy as np, re
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_enable_x64", True)
import isometry as iso
from isometry.linalg._lapack import batched_lapack_calls
assert jax.device_count() == 8, jax.devices()
"""

BATCH_SCRIPT = HEADER + """
w = jax.random.normal(jax.random.key(0), (12, 12)) / jnp.sqrt(12.0)
apply_fn = lambda p, x: jnp.tanh(p @ x)
opts = dict(k=3, num_steps=6, max_steps=12, num_probes=2, chi_probes=3)
mesh = iso.device_mesh()
xs = jax.random.normal(jax.random.key(1), (13, 12))  # 13 does not divide 8
for method, options in (("dense", {}), ("lanczos", opts)):
    sfn = iso.sharded_spectrum_fn(apply_fn, method, mesh=mesh, **options)
    single = iso.spectrum_fn(apply_fn, method, batched=True, **options)
    for key in (jax.random.key(2), None):
        for params in (w, 1.5 * w):  # new values: no new compilation
            got, want = sfn(params, xs, key), single(params, xs, key)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    assert sfn.program._cache_size() == 2, sfn.program._cache_size()  # one per key / no key
    args, static = sfn.arguments(w, xs, jax.random.key(2))
    hlo = sfn.program.lower(*args, **static).compile().as_text()
    counts = iso.collective_counts(hlo)
    print(method, counts)
    # several CPU devices: every SVD one matrix at a time (batched LAPACK calls deadlock)
    assert batched_lapack_calls(hlo) == [], batched_lapack_calls(hlo)
    assert "lapack_dgesdd_ffi" in hlo
    assert not any(counts["in_loops"].values()), counts
    if method == "lanczos":
        assert counts["while_loops"] > 0
        # the batch divides 8: the result stays sharded, one slice per device
        spec = sfn(w, xs[:8], None)
        assert len({s.device for s in spec.top_singular_values.addressable_shards}) == 8

# The counter sees what shard_map avoids: jit(vmap) of the loops over a globally sharded batch
# has a batched while predicate, i.e. an all-reduce in every iteration.
from jax.sharding import NamedSharding, PartitionSpec as P
one = iso.spectrum_fn(apply_fn, "lanczos", **opts)
naive = jax.jit(jax.vmap(one.program, in_axes=(None, 0, 0)))
xs8 = jax.device_put(xs[:8], NamedSharding(mesh, P("data")))
keys = jax.device_put(jax.random.split(jax.random.key(2), 8), NamedSharding(mesh, P("data")))
counts = iso.collective_counts(naive.lower(w, xs8, keys).compile().as_text())
print("jit(vmap)", counts)
assert counts["in_loops"]["all-reduce"] > 0, counts
print("OK")
"""

MODEL_SCRIPT = HEADER + """
from flax import nnx
from jax.sharding import PartitionSpec as P
import models
mesh = iso.device_mesh(data=2, model=4)
kw = dict(heads=4, ffn=32, variant="prenorm", param_dtype=jnp.float64)
plain = models.Transformer(2, 16, rngs=nnx.Rngs(0), **kw)
sharded = models.Transformer(2, 16, rngs=nnx.Rngs(0), mesh=mesh, **kw)
specs = nnx.get_partition_spec(nnx.state(sharded, nnx.Param))
qkv = specs["blocks"]["layers"]["attention"]["qkv"]["kernel"]
assert qkv.get_value() == P(None, None, "model"), qkv  # (layers, d_model, 3 d_model): heads split
assert specs["blocks"]["layers"]["feed_forward"]["linear2"]["kernel"].get_value() == P(None, "model", None)

opts = dict(k=3, num_steps=6, max_steps=12, num_probes=2, chi_probes=3)
xs = jax.random.normal(jax.random.key(1), (3, 4, 16))  # 3 inputs of (seq 4, d_model 16)
fn, params = iso.from_nnx(plain)
want = iso.spectrum_fn(fn, "lanczos", batched=True, **opts)(params, xs, jax.random.key(2))
fn, params = iso.from_nnx(sharded)
sfn = iso.sharded_spectrum_fn(fn, "lanczos", mesh=mesh, **opts)
got = sfn(params, xs, jax.random.key(2))
for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10)

# The arrays the program sees: the compiled input shardings of the parameters.
args, static = sfn.arguments(params, xs, jax.random.key(2))
compiled = sfn.program.lower(*args, **static).compile()
leaves = jax.tree_util.tree_leaves(args[0])
shardings = jax.tree_util.tree_leaves(compiled.input_shardings[0][0])
assert len(leaves) == len(shardings)
full = per_device = 0
split_shapes = set()
for a, s in zip(leaves, shardings):
    if not jnp.issubdtype(a.dtype, jnp.floating):
        continue
    full += a.size
    per_device += int(np.prod(s.shard_shape(a.shape)))
    if a.ndim == 3:  # every stacked weight matrix (layers, in, out) is split over "model"
        assert s.shard_shape(a.shape)[-2:] != a.shape[-2:], (a.shape, s)
        split_shapes |= {a.shape, a.shape[1:]}
print("parameters per device", per_device, "of", full)
assert per_device < 0.4 * full
hlo = compiled.as_text()
gathered = {tuple(int(d) for d in m.split(",") if d)
            for m in re.findall(r"= \\w+\\[([\\d,]*)\\][^ ]* all-gather(?:-start)?\\(", hlo)}
assert not gathered & split_shapes, gathered & split_shapes  # no weight matrix is gathered
counts = iso.collective_counts(hlo)
print(counts)
assert batched_lapack_calls(hlo) == [], batched_lapack_calls(hlo)
# inside the loops: only the tensor-parallel collectives over "model" (groups of 4 devices
# that share a data index), none across "data"
assert counts["in_loops"]["collective-permute"] == 0
assert counts["loop_groups"] == ["[2,4]<=[8]"], counts["loop_groups"]

# FSDP-style fully connected net: every W split on its input side; same spectrum.
fc = dict(depth=3, width=16, variant="residual", param_dtype=jnp.float64)
net = models.FullyConnected(**fc, rngs=nnx.Rngs(0), mesh=mesh)
kernel = net.blocks.layers.linear.kernel[...]
assert tuple(kernel.sharding.spec)[:2] == (None, "model"), kernel.sharding
assert kernel.addressable_shards[0].data.shape == (3, 4, 16)
xs = jax.random.normal(jax.random.key(3), (5, 16))
fn, params = iso.from_nnx(models.FullyConnected(**fc, rngs=nnx.Rngs(0)))
want = iso.spectrum_fn(fn, "lanczos", batched=True, **opts)(params, xs)
fn, params = iso.from_nnx(net)
got = iso.sharded_spectrum_fn(fn, "lanczos", mesh=mesh, **opts)(params, xs)
np.testing.assert_allclose(got.top_singular_values, want.top_singular_values, rtol=1e-8)
np.testing.assert_allclose(got.chi, want.chi, rtol=1e-8)
print("OK")
"""

PROCESS_SCRIPT = """
import dataclasses, sys
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=rank)
import isometry as iso
assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
w = jax.random.normal(jax.random.key(0), (12, 12)) / jnp.sqrt(12.0)
xs = np.asarray(jax.random.normal(jax.random.key(1), (11, 12)))  # global batch, every process
opts = dict(k=3, num_steps=6, max_steps=12, num_probes=2, chi_probes=3)
sfn = iso.sharded_spectrum_fn(lambda p, x: jnp.tanh(p @ x), "lanczos", mesh=iso.device_mesh(),
                              **opts)
results = {}
for batch in (11, 8):  # padded (result replicated) and divisible (result sharded)
    host = iso.to_host(sfn(np.asarray(w), xs[:batch], jax.random.key(2)))
    results.update({f"{f.name}_{batch}": getattr(host, f.name) for f in dataclasses.fields(host)
                    if not f.metadata.get("static")})
if jax.process_index() == 0:  # only process 0 writes
    np.savez(out, **results)
print("done", rank, flush=True)
"""


def run_script(script: str, timeout: float = 300) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_eight_devices_one_program_no_collective_in_the_loops():
    run_script(BATCH_SCRIPT)


def test_tensor_parallel_transformer_on_a_2x4_mesh():
    run_script(MODEL_SCRIPT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_processes(commands: list[list[str]]) -> list[tuple[str, str]]:
    """Runs the commands at once (the processes of one jax.distributed job): their (stdout,
    stderr), after asserting each exited with 0."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for cmd in commands]
    try:
        logs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, logs):
        assert p.returncode == 0, stderr[-3000:]
    return logs


def test_two_processes_equal_one_process(tmp_path):
    port = _free_port()
    script = textwrap.dedent(PROCESS_SCRIPT)
    outs = [tmp_path / f"spectra_{rank}.npz" for rank in range(2)]
    logs = _run_processes([[sys.executable, "-c", script, str(rank), str(port), str(outs[rank])]
                           for rank in range(2)])
    assert all("done" in stdout for stdout, _ in logs)
    assert outs[0].exists() and not outs[1].exists()  # files from process 0 only
    got = np.load(outs[0])
    w = jax.random.normal(jax.random.key(0), (12, 12)) / jnp.sqrt(12.0)
    xs = jax.random.normal(jax.random.key(1), (11, 12))
    opts = dict(k=3, num_steps=6, max_steps=12, num_probes=2, chi_probes=3)
    single = iso.spectrum_fn(lambda p, x: jnp.tanh(p @ x), "lanczos", batched=True, **opts)
    for batch in (11, 8):
        want = single(w, xs[:batch], jax.random.key(2))
        for name in ("top_singular_values", "error_bounds", "chi", "nodes", "weights"):
            np.testing.assert_allclose(got[f"{name}_{batch}"], np.asarray(getattr(want, name)),
                                       rtol=1e-10, atol=1e-12)


def test_one_device_mesh_and_bad_mesh():
    w = jax.random.normal(jax.random.key(0), (8, 8))
    xs = jax.random.normal(jax.random.key(1), (3, 8))
    spec = iso.sharded_spectrum_fn(lambda p, x: p @ x, "dense")(w, xs)
    np.testing.assert_allclose(spec.singular_values,
                               jnp.broadcast_to(jnp.linalg.svd(w, compute_uv=False), (3, 8)),
                               rtol=1e-10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="device_mesh"):
        iso.sharded_spectrum_fn(lambda p, x: p @ x, mesh=mesh)
    assert iso.parse_mesh("data=1").axis_names == ("data",)
    assert iso.parse_mesh("data=1,model=1").axis_names == ("data", "model")
    with pytest.raises(ValueError, match="data=D"):
        iso.parse_mesh("rows=2")
    with pytest.raises(ValueError, match="needs 16 devices"):
        iso.device_mesh(data=4, model=4)


def test_models_without_a_mesh_carry_no_sharding_metadata():
    """The default stays the unsharded model of before: no partitioning metadata at all."""
    for model in (models.Transformer(2, 8, heads=2, ffn=16, vocab_size=11, rngs=nnx.Rngs(0)),
                  models.FullyConnected(2, 8, variant="prenorm", in_features=3, out_features=2,
                                        rngs=nnx.Rngs(0))):
        for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            assert not variable.get_metadata().get("out_sharding"), variable
    with pytest.raises(ValueError, match="need a mesh"):
        models.FullyConnected(2, 8, sharding_rules={"fc_in": None}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown logical axes"):
        models.Transformer(1, 8, heads=2, ffn=8, mesh=iso.device_mesh(),
                           sharding_rules={"rows": "model"}, rngs=nnx.Rngs(0))


def test_one_device_mesh_model_equals_the_unsharded_model():
    """`mesh=` with one device: same parameters, bit for bit, and a partition spec per leaf."""
    mesh = iso.device_mesh(data=1, model=1)
    kw = dict(heads=2, ffn=16, vocab_size=11, variant="gpt2norm")
    a = models.Transformer(2, 8, rngs=nnx.Rngs(0), **kw)
    b = models.Transformer(2, 8, rngs=nnx.Rngs(0), mesh=mesh, **kw)
    for x, y in zip(jax.tree_util.tree_leaves(nnx.state(a, nnx.Param)),
                    jax.tree_util.tree_leaves(nnx.state(b, nnx.Param))):
        np.testing.assert_array_equal(x, y)
    specs = nnx.get_partition_spec(nnx.state(b, nnx.Param))
    assert specs["blocks"]["layers"]["feed_forward"]["linear1"]["kernel"].get_value() == (
        jax.sharding.PartitionSpec(None, None, "model"))
    assert specs["embedding"]["embedding"].get_value() == jax.sharding.PartitionSpec("model", None)
    tokens = jnp.arange(6)[None] % 11
    np.testing.assert_array_equal(a(tokens), b(tokens))


def test_cli_spectrum_on_a_simulated_mesh_equals_one_device(tmp_path):
    """`isometry spectrum --simulate-devices 4 --mesh data=2,model=2`: same spectra."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    common = [sys.executable, "-m", "isometry", "spectrum", "--model", "transformer",
              "--variant", "prenorm", "--depth", "2", "--d-model", "8", "--heads", "2",
              "--ffn", "8", "--samples", "3", "--x64", "--json"]
    outs = []
    for extra in ([], ["--simulate-devices", "4", "--mesh", "data=2,model=2"]):
        out = subprocess.run(common + extra + ["--out", str(tmp_path / f"out{len(extra)}")],
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outs.append(json.loads(out.stdout)["records"])  # {"records": [...], ...}
    assert len(outs[0]) == len(outs[1]) == 1
    for a, b in zip(*outs):
        np.testing.assert_allclose(a["singular_values"], b["singular_values"], rtol=1e-8,
                                   atol=1e-12)


TRAIN_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_enable_x64", True)
from flax import nnx
import isometry as iso, models
from isometry import data as D
from isometry.train._tracking import read_metrics
from isometry.train import TrainConfig, train
data = D.load_data("synthetic:2x2x3")
cfg = TrainConfig(steps=20, batch_size=16, lr=0.1, alpha_lr=0.1, checkpoint_every=10)
records = {}
for name, mesh in (("one", None), ("four", iso.device_mesh(data=4))):
    net = models.FullyConnected(3, 8, variant="rezero", in_features=12, out_features=10,
                                param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    run = f"{sys.argv[1]}/{name}"
    result = train(net, data, cfg, run_dir=run, input_shape=(12,), probes=2, track_every=10,
                   log_every=1, mesh=mesh)
    records[name] = read_metrics(run)
    if mesh is not None:  # the step ran on the 4 devices: its parameters live on all of them
        leaf = jax.tree_util.tree_leaves(result.params)[0]
        assert len(leaf.sharding.device_set) == 4, leaf.sharding
one, four = records["one"], records["four"]
assert [r["step"] for r in one] == [r["step"] for r in four] == list(range(21))
for a, b in zip(one, four):
    if "loss" in a:
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
    np.testing.assert_allclose(list(b["alpha"].values()), list(a["alpha"].values()), rtol=1e-6,
                               atol=1e-9)
assert abs(list(four[-1]["alpha"].values())[0]) > 0  # alpha moved from 0: trained
print("OK")
"""


def test_data_parallel_training_on_4_devices_equals_one_device(tmp_path):
    """20 steps of `train(..., mesh=)` over 4 devices: the losses and alphas of one device."""
    script = textwrap.dedent(TRAIN_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


MESH_TRAIN = ["train", "--model", "fc", "--variant", "rezero", "--depth", "3", "--width", "8",
              "--data", "synthetic:2x2x3", "--batch-size", "8", "--lr", "0.05", "--steps", "200",
              "--track-every", "50", "--probes", "2", "--log-every", "1",
              "--checkpoint-every", "30", "--eval-every", "100", "--eval-batches", "2", "--x64",
              "--no-progress", "--simulate-devices", "4", "--mesh", "data=4"]


def _checkpoint_step(run_dir):
    try:
        return int(np.load(os.path.join(run_dir, "checkpoint.npz"))["step"])
    except (OSError, KeyError, ValueError):
        return None


def _records_past_a_checkpoint(run_dir: str):
    """A test of whether run_dir holds a checkpoint and 4+ records (one per step) beyond it."""
    metrics = os.path.join(run_dir, "metrics.jsonl")

    def ready() -> bool:
        step, last = _checkpoint_step(run_dir), last_step(metrics)
        return bool(step) and last is not None and last > step + 3
    return ready


def test_data_parallel_cli_run_survives_kill_9_and_resumes(tmp_path):
    """`isometry train --simulate-devices 4 --mesh data=4`: kill -9 after a checkpoint, resume,
    and every record equals an uninterrupted run on the same mesh."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cli = [sys.executable, "-m", "isometry", *MESH_TRAIN, "--run-dir"]
    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    proc = subprocess.Popen(cli + [killed], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_until(_records_past_a_checkpoint(killed), proc, what="records past a checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert 0 < _checkpoint_step(killed) < 200
    for args in ([killed, "--resume"], [reference]):
        out = subprocess.run(cli + args, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    resumed, uninterrupted = read_metrics(killed), read_metrics(reference)
    assert [r["step"] for r in resumed] == list(range(201))  # strictly increasing, none lost
    assert resumed == uninterrupted
    assert "spectrum" in resumed[-1]


TWO_PROCESS_TRAIN = ["train", "--model", "fc", "--variant", "rezero", "--depth", "3", "--width",
                     "8", "--data", "synthetic:2x2x3", "--batch-size", "8", "--lr", "0.05",
                     "--track-every", "10", "--probes", "2", "--log-every", "1",
                     "--checkpoint-every", "10", "--eval-every", "10", "--eval-batches", "2",
                     "--x64", "--no-progress"]


def _two_processes(args: list[str], run_dir) -> list[tuple[str, str]]:
    """`isometry ARGS` as two processes of one jax.distributed job (2 CPU devices each)."""
    port = _free_port()
    return _run_processes([
        [sys.executable, "-m", "isometry", *args, "--simulate-devices", "2", "--mesh", "data=4",
         "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(rank),
         "--run-dir", str(run_dir)] for rank in range(2)])


def test_two_processes_train_and_resume_like_one_device(tmp_path):
    """`isometry train --coordinator ...` as two processes over a 4-device mesh, 20 steps, then
    resumed to 30: every record (loss, alpha, the tracker's sharded spectra) equals a one-device
    run's to 1e-6; one record per step, so only process 0 wrote (two writers would duplicate
    lines), and only process 0 printed the result."""
    shared = tmp_path / "two"
    logs = _two_processes(TWO_PROCESS_TRAIN + ["--steps", "20"], shared)
    assert [("step=20" in out) for out, _ in logs] == [True, False]
    assert [r["step"] for r in read_metrics(shared)] == list(range(21))
    _two_processes(TWO_PROCESS_TRAIN + ["--steps", "30", "--resume"], shared)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = tmp_path / "one"
    out = subprocess.run([sys.executable, "-m", "isometry", *TWO_PROCESS_TRAIN, "--steps", "30",
                          "--run-dir", str(one)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two, single = read_metrics(shared), read_metrics(one)
    assert [r["step"] for r in two] == [r["step"] for r in single] == list(range(31))
    for a, b in zip(two, single):
        assert a.keys() == b.keys()
        for key in ("loss", "eval_loss"):
            if key in b:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
        np.testing.assert_allclose(list(a["alpha"].values()), list(b["alpha"].values()),
                                   rtol=1e-6, atol=1e-12)
        if "spectrum" in b:
            np.testing.assert_allclose(a["spectrum"]["chi"], b["spectrum"]["chi"], rtol=1e-6)
    assert sorted(os.listdir(shared / "spectra")) == sorted(os.listdir(one / "spectra"))
    assert abs(list(two[-1]["alpha"].values())[0]) > 0  # trained


@pytest.mark.parametrize("extra, message", [
    (["--coordinator", "localhost:1"], "needs --num-processes N and --process-id I"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], "0 <= I < N"),
    (["--process-id", "1"], "need --coordinator"),
])
def test_coordinator_arguments_are_checked(extra, message, capsys):
    from isometry.cli import main

    assert main([*TWO_PROCESS_TRAIN, "--steps", "2", *extra]) == 2  # before jax.distributed
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
