"""Dense engine vs torch.func.jacrev + torch.linalg.svdvals, and vs the floor.

For FC ReLU ReZero nets (α = 0.1, so the spectrum is not trivial) of depth × width 32×256,
64×512 and 32×1024, both libraries compute σ(J) of the input-output Jacobian at one input,
on identical float32 weights, on the CPU. Per size we report the median wall time of each
(after a warm-up that excludes compilation; the four timings below are taken round-robin so
that load changes hit all alike), their ratio, and the floor:

    floor = (Jacobian FLOPs) / (measured matmul rate) + (measured SVD time),

Jacobian FLOPs = 2 L N³ (propagating an N × N tangent through L layers, one N × N × N matmul
each); the matmul rate is measured on exactly that work, L dependent N × N × N float32
products in one jitted loop, so the floor is what the Jacobian's matmuls and the SVD cost
with nothing else. Targets: at least 3× faster than torch.func, within 1.3× of the floor.

Run:  pip install -e '.[bench]' && python benchmarks/dense_engine.py [--repeats 5] [--sizes 32x256,...]
Writes benchmarks/results/dense_engine.json.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import isometry as iso
from isometry._io import write_json
import models
from _timing import interleaved_medians, machine

ALPHA = 0.1
RESULTS = os.path.join(os.path.dirname(__file__), "results", "dense_engine.json")


def torch_model(kernels, biases):
    """The same ReZero FC net in torch: x ← x + α relu(x W + b), weights copied from JAX."""
    ws = [torch.from_numpy(np.array(k)) for k in kernels]
    bs = [torch.from_numpy(np.array(b)) for b in biases]

    def f(x):
        for w, b in zip(ws, bs):
            x = x + ALPHA * torch.relu(x @ w + b)
        return x

    return f


def bench_size(depth: int, width: int, repeats: int) -> dict:
    net = models.FullyConnected(depth, width, variant="rezero", alpha_init=ALPHA,
                                sigma_b2=0.01, rngs=nnx.Rngs(0))
    apply_fn, params = iso.from_nnx(net)
    x = jax.random.normal(jax.random.key(1), (width,), jnp.float32)
    sfn = iso.spectrum_fn(apply_fn, method="dense")
    ours_sv = sfn(params, x).singular_values

    kernels = list(net.blocks.layers.linear.kernel[...])  # stacked (L, N, N): one per layer
    biases = list(net.blocks.layers.linear.bias[...])
    f = torch_model(kernels, biases)
    xt = torch.from_numpy(np.array(x))

    def torch_spectrum():
        with torch.no_grad():
            return torch.linalg.svdvals(torch.func.jacrev(f)(xt))

    torch_sv = torch_spectrum().numpy()

    a = jax.random.normal(jax.random.key(2), (width, width), jnp.float32)
    stack = jax.random.normal(jax.random.key(3), (depth, width, width), jnp.float32) / width**0.5
    # The matmuls a Jacobian of this net needs and nothing else: L dependent N×N×N products.
    chain = jax.jit(lambda t, ws: jax.lax.fori_loop(0, depth, lambda i, t: t @ ws[i], t))
    svd = jax.jit(lambda m: jnp.linalg.svd(m, compute_uv=False))
    t = interleaved_medians(dict(
        ours=lambda: sfn(params, x).singular_values.block_until_ready(),
        torch=torch_spectrum,
        matmuls=lambda: chain(a, stack).block_until_ready(),
        svd=lambda: svd(a).block_until_ready()), repeats)
    t_ours, t_torch = t["ours"], t["torch"]
    flops = 2 * depth * width**3
    rate = flops / t["matmuls"]
    floor = t["matmuls"] + t["svd"]
    t_svd = t["svd"]

    rel = np.max(np.abs(np.asarray(ours_sv) - torch_sv) / np.asarray(ours_sv).max())
    return dict(depth=depth, width=width, seconds_isometry=t_ours, seconds_torch_func=t_torch,
                speedup_vs_torch=t_torch / t_ours, floor_seconds=floor,
                ratio_to_floor=t_ours / floor, torch_ratio_to_floor=t_torch / floor,
                jacobian_gflops=flops / 1e9,
                matmul_gflops_per_s=rate / 1e9, svd_seconds=t_svd,
                max_sigma_difference_relative_to_sigma_max=float(rel),
                meets_3x_torch=bool(t_torch / t_ours >= 3), meets_1_3x_floor=bool(t_ours / floor <= 1.3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x256,64x512,32x1024",
                        help="comma list of DEPTHxWIDTH (default: 32x256,64x512,32x1024)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for size in args.sizes.split(","):
        depth, width = map(int, size.lower().split("x"))
        row = bench_size(depth, width, args.repeats)
        rows.append(row)
        print(f"{depth:>4} x {width:<5} isometry {row['seconds_isometry']*1e3:9.1f} ms   "
              f"torch.func {row['seconds_torch_func']*1e3:9.1f} ms   "
              f"speed-up {row['speedup_vs_torch']:5.2f}x   floor {row['floor_seconds']*1e3:8.1f} ms   "
              f"ours/floor {row['ratio_to_floor']:5.2f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, dict(benchmark="dense_engine", alpha=ALPHA, dtype="float32", machine=dict(machine(), torch=torch.__version__),
                       results=rows), indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
