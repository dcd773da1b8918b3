"""A batch of 64 Jacobian spectra, and a training step, as one SPMD program over 1-8 devices.

`isometry.sharded_spectrum_fn` compiles one program per mesh: a `shard_map` over the "data"
axis in which every device runs the vmapped per-input spectrum on its slice of the batch. The
workload: a width-32, depth-4 residual fully connected net, 64 inputs, dense spectra (32 × 32
Jacobians and their SVDs) and matrix-free ones (Golub–Kahan with a convergence test).

On a CPU the devices are simulated (`jax_num_cpu_devices`, set before jax starts) and share the
machine's cores, so the time of one program over 8 devices against one device measures the
overhead of the SPMD program (partitioning, per-device dispatch, the final gather), not
scaling: target at most 1.15×. On a GPU/TPU host (or with `--devices` real devices) the same
script measures real scaling. The training step (`train_step`) is the data-parallel step of
`isometry.train(..., mesh=)`, parameters replicated, at two sizes: "tiny" (the net above, 8
examples per device: a step of about a millisecond, where per-device dispatch and the
gradient all-reduce are most of the time) and "fig5" (the paper's Figure 5 net, 32 layers of
width 256 on 3,072 inputs, batch 128 and 1,024), each beside the gradient all-reduce alone
(one parameter-sized float32 vector per device summed into a replicated one): on simulated CPU
devices that sum reads and writes every device's copy through the one shared memory. XLA's
cost analysis of each program (flops and bytes accessed, summed over the devices) says where
the rest goes: every replica reads every weight and updates every parameter, so n simulated
devices move about n times the bytes of one through the same memory, a cost that only a
larger batch per device amortizes (real devices have a memory each). All meshes live in one process and are timed round-robin
(`interleaved_medians`), so load changes on a shared machine hit them alike.

The HLO of each program is searched for collectives (all-reduce, all-gather,
collective-permute, all-to-all, reduce-scatter), in all and inside while-loop bodies; for
contrast, `jit(vmap(...))` of the same per-input spectrum over the globally sharded batch,
whose batched while predicate costs one all-reduce per loop iteration.

    python benchmarks/sharding.py [--repeats 7] [--simulate 8]
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--simulate", type=int, default=8, help="simulated CPU devices (0: real ones)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "sharding.json"))
    args = p.parse_args(argv)

    import jax
    if args.simulate:
        jax.config.update("jax_num_cpu_devices", args.simulate)
    import jax.numpy as jnp
    from flax import nnx

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    sys.path.insert(0, os.path.dirname(__file__))
    import isometry as iso  # noqa: E402
    import models  # noqa: E402
    from _timing import interleaved_medians, machine  # noqa: E402
    from isometry._io import write_json  # noqa: E402

    counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
    net = models.FullyConnected(args.depth, args.width, variant="residual", rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(net)
    xs = jax.random.normal(jax.random.key(1), (args.batch, args.width))
    key = jax.random.key(2)
    lanczos = dict(k=4, max_steps=24, num_steps=12, num_probes=4, chi_probes=8)
    results = {"machine": machine(), "batch": args.batch, "model": dict(
        kind="FullyConnected", variant="residual", depth=args.depth, width=args.width),
        "lanczos_options": lanczos, "devices": counts, "methods": {}}

    for method, options in (("dense", {}), ("lanczos", lanczos)):
        calls, hlo = {}, {}
        for n in counts:
            mesh = iso.device_mesh(devices=jax.devices()[:n])
            sfn = iso.sharded_spectrum_fn(apply_fn, method, mesh=mesh, **options)
            call_args, static = sfn.arguments(params, xs, key)
            hlo[n] = iso.collective_counts(
                sfn.program.lower(*call_args, **static).compile().as_text())
            calls[n] = (lambda s=sfn, a=call_args, st=static:
                        jax.block_until_ready(s.program(*a, **st)))
        times = interleaved_medians({str(n): calls[n] for n in counts}, args.repeats)
        entry = {"seconds": times, "collectives": {str(n): hlo[n] for n in counts}}
        if 1 in counts and counts[-1] > 1:
            entry[f"overhead_{counts[-1]}_vs_1"] = times[str(counts[-1])] / times["1"]
        if method == "lanczos":  # contrast: the batched while predicate of jit(vmap)
            entry["jit_vmap_collectives"] = jit_vmap_collectives(apply_fn, params, xs, key,
                                                                 options, counts[-1])
        results["methods"][method] = entry
        print(method, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                       if k != "collectives"}, flush=True)
    steps = {"tiny": dict(depth=args.depth, width=args.width, in_features=args.width,
                          batch=8 * max(counts)),
             "fig5": dict(depth=32, width=256, in_features=3072, batch=128),
             "fig5_batch1024": dict(depth=32, width=256, in_features=3072, batch=1024)}
    results["train_step"] = {}
    for name, size in steps.items():
        results["train_step"][name] = train_step_times(counts, repeats=args.repeats, **size)
        print("train_step", name, results["train_step"][name], flush=True)
    results["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    results["target_overhead"] = 1.15
    write_json(args.out, results)
    print("wrote", args.out)
    return 0


def jit_vmap_collectives(apply_fn, params, xs, key, options, n) -> dict:
    """Collectives of `jit(vmap(spectrum))` over a batch sharded on n devices (no shard_map)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    import isometry as iso

    mesh = iso.device_mesh(devices=jax.devices()[:n])
    one = iso.spectrum_fn(apply_fn, "lanczos", **options)
    naive = jax.jit(jax.vmap(one.program, in_axes=(None, 0, 0)))
    batch = NamedSharding(mesh, P("data"))
    return iso.collective_counts(naive.lower(
        jax.device_put(params, NamedSharding(mesh, P())), jax.device_put(xs, batch),
        jax.device_put(jax.random.split(key, len(xs)), batch)).compile().as_text())


def train_step_times(counts, *, depth, width, in_features, batch, repeats) -> dict:
    """Seconds of one data-parallel training step (`isometry.train(..., mesh=)`'s step: the
    batch split over "data", parameters replicated) of a ReZero FC net over each device count
    (Adam)."""
    import jax
    import numpy as np
    from flax import nnx

    import isometry as iso
    import models
    from _timing import interleaved_medians
    from isometry.parallel._sharding import replicate, shard_batch
    from isometry.train import TrainConfig, make_optimizer, make_train_step

    net = models.FullyConnected(depth, width, variant="rezero", in_features=in_features,
                                out_features=10, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    tx = make_optimizer(TrainConfig(steps=10, batch_size=batch, optimizer="adam"), params)
    x = np.asarray(jax.random.normal(jax.random.key(3), (batch, in_features)))
    y = np.arange(batch) % 10
    calls, cost = {}, {}
    for n in counts:
        mesh = iso.device_mesh(devices=jax.devices()[:n])
        step = make_train_step(graphdef, tx)
        state = replicate((params, rest, tx.init(params)), mesh)
        data = shard_batch((x, y), mesh)
        analysis = step.lower(*state, *data).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        cost[str(n)] = {"flops_all_devices": n * float(analysis.get("flops", 0.0)),
                        "bytes_accessed_all_devices": n * float(analysis.get("bytes accessed", 0.0))}
        jax.block_until_ready(step(*state, *data))  # compile
        calls[str(n)] = lambda f=step, s=state, d=data: jax.block_until_ready(f(*s, *d))
    size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    reduce = all_reduce_call(size, counts[-1])
    times = interleaved_medians({**calls, "all_reduce": reduce}, repeats)
    out = {"model": dict(kind="FullyConnected", variant="rezero", depth=depth, width=width,
                         in_features=in_features), "batch": batch, "parameters": size,
           "seconds": {str(n): times[str(n)] for n in counts}, "xla_cost_analysis": cost,
           f"gradient_all_reduce_seconds_{counts[-1]}": times["all_reduce"]}
    if len(counts) > 1:
        out[f"overhead_{counts[-1]}_vs_1"] = times[str(counts[-1])] / times["1"]
    return out


def all_reduce_call(size: int, n: int):
    """A call summing one float32 vector of `size` per device over n devices into a replicated
    result: the gradient all-reduce of a data-parallel step, alone."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    import isometry as iso

    mesh = iso.device_mesh(devices=jax.devices()[:n])
    parts = jax.device_put(jnp.ones((n, size), jnp.float32), NamedSharding(mesh, P("data")))
    total = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=NamedSharding(mesh, P()))
    jax.block_until_ready(total(parts))
    return lambda: jax.block_until_ready(total(parts))


if __name__ == "__main__":
    sys.exit(main())
