"""Wall-time cost of tracking Jacobian spectra during training (issue 7).

The paper's Figure 5 net: a 32-layer, width-256 ReZero FC with a 3072 → 256 input projection
and a 256 → 10 head, Adagrad, batch 100 on image-shaped synthetic data. "untracked" runs the
jitted optax step alone; "tracked" also calls `isometry.Tracker.update` every step: a record
with loss and every α every 10 steps, and every 50 steps the dense spectrum of the residual
stack's Jacobian (256 × 256) on 8 fixed probe inputs, written to a run directory.

On a loaded CPU, LAPACK's SVD (OpenBLAS/OpenMP threads) can thrash: set OMP_NUM_THREADS=1
(8 SVDs of 256 × 256 drop from seconds to ~30 ms on a shared 2-core machine); the JSON records
the thread settings and the load average.

Both loops feed the same pre-generated device batches (no host data generation in either),
so the overhead is measured against the bare compute of the step — the strictest baseline.
Compilation is excluded (both are warmed up); the variants alternate `--repeats` times and
the median per variant is reported. Target: overhead <= 10%.

    python benchmarks/tracking_overhead.py [--steps 300] [--repeats 21]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import models  # noqa: E402
from _timing import median_time  # noqa: E402
from isometry._io import write_json  # noqa: E402
from isometry.data import SyntheticImages  # noqa: E402
from isometry.train._tracking import Tracker  # noqa: E402
from isometry.train import TrainConfig, make_optimizer, make_train_step  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "tracking_overhead.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=300, help="steps per timed run (multiple of 50)")
    p.add_argument("--track-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    data = SyntheticImages((32, 32, 3))
    model = models.FullyConnected(args.depth, args.width, variant="rezero", in_features=3072,
                                  out_features=10, rngs=nnx.Rngs(0))
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, optimizer="adagrad", lr=0.01)
    tx = make_optimizer(config, params)
    step_fn = make_train_step(graphdef, tx)
    batches = [tuple(map(jnp.asarray, data.train_batch(0, s, args.batch_size))) for s in range(10)]
    batches = [(x.reshape(len(x), -1), y) for x, y in batches]
    x0 = model.embed(jnp.asarray(data.probe_inputs(args.probes).reshape(args.probes, -1)))
    stack_fn = lambda state, x: nnx.merge(graphdef_eval, state).stack(x)  # noqa: E731

    def run(tracker, params, rest, opt_state, first_step):
        t0 = time.perf_counter()
        for i in range(args.steps):
            x, y = batches[i % len(batches)]
            params, rest, opt_state, m = step_fn(params, rest, opt_state, x, y)
            if tracker is not None:
                step = first_step + i + 1
                if tracker.due(step):
                    tracker.update(step, nnx.merge_state(params, rest), loss=m["loss"])
        jax.block_until_ready((params, opt_state))
        return time.perf_counter() - t0, params, rest, opt_state

    with tempfile.TemporaryDirectory() as run_dir:
        tracker = Tracker(run_dir, apply_fn=stack_fn, probes=x0, every=args.track_every,
                          log_every=args.log_every)
        state = (params, rest, tx.init(params))
        # warm-up: compile the step and the spectrum function
        _, *state = run(None, *state, 0)
        tracker.update(0, nnx.merge_state(state[0], state[1]), loss=0.0)
        times = {"untracked": [], "tracked": []}
        step = 0
        for r in range(args.repeats):
            for name in (("untracked", "tracked") if r % 2 == 0 else ("tracked", "untracked")):
                t, *state = run(tracker if name == "tracked" else None, *state, step)
                if name == "tracked":
                    step += args.steps
                times[name].append(t)
        n_spectra = sum(1 for _ in os.listdir(os.path.join(run_dir, "spectra")))
        merged = nnx.merge_state(state[0], state[1])
        spectrum_seconds = median_time(
            lambda: tracker.spectrum_fn(merged, x0).singular_values.block_until_ready(), args.repeats)
        tracker.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = med["tracked"] / med["untracked"] - 1
    d, w, b = args.depth, args.width, args.batch_size
    train_flops = 6 * b * (d * w * w + 3072 * w + 10 * w) * args.track_every  # fwd + bwd
    jacobian_flops = 2 * d * w**3 * args.probes
    result = {
        "benchmark": "tracking_overhead",
        "model": f"FullyConnected rezero depth {args.depth} width {args.width}, in 3072, out 10",
        "batch_size": args.batch_size, "steps_per_run": args.steps,
        "track_every": args.track_every, "log_every": args.log_every, "probes": args.probes,
        "jacobian": f"residual stack x_0 -> x_L, {args.width} x {args.width}, dense",
        "repeats": args.repeats, "seconds": times, "median_seconds": med,
        "steps_per_second": {k: args.steps / v for k, v in med.items()},
        "overhead": overhead,
        "paired_overheads": [t / u - 1 for u, t in zip(times["untracked"], times["tracked"])],
        "target": 0.10, "meets_target": overhead <= 0.10,
        "spectra_written": n_spectra,
        "spectrum_seconds_per_event": spectrum_seconds,
        "spectrum_share_of_untracked_time": spectrum_seconds * args.steps / args.track_every / med["untracked"],
        "jacobian_flops_over_training_flops_between_spectra": jacobian_flops / train_flops,
        "device": str(jax.devices()[0]), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")},
        "load_average": os.getloadavg(),
        "note": "variants interleaved; median of repeats; compilation excluded; shared machine",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, result, indent=1)
    print(f"untracked {med['untracked']:.3f} s, tracked {med['tracked']:.3f} s per {args.steps} "
          f"steps: overhead {100 * overhead:+.1f}% (target <= 10%); one spectrum event "
          f"{spectrum_seconds * 1e3:.0f} ms = {100 * result['spectrum_share_of_untracked_time']:.1f}% "
          f"of the untracked time -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
