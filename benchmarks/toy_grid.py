"""Times the Figure 2 gradient grid: jitted JAX (`toy.gradient_grid`) against NumPy.

Both evaluate log ‖∂C‖² of the toy (1 + αw)^L over an n × n (w, α) grid from the closed-form
gradient; the JAX side is also checked against vmapped autodiff. Compilation is excluded
(one warm-up call), every JAX call ends in `block_until_ready()`, and the median of
`--repeats` calls is reported. Writes benchmarks/results/toy_grid.json.

    .venv/bin/python benchmarks/toy_grid.py [--sizes 100,400,1000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)
from _timing import median_time  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from isometry import toy  # noqa: E402
from isometry._io import write_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "toy_grid.json")


def numpy_grid(inputs: np.ndarray, target: float, depth: int, w: np.ndarray,
               alpha: np.ndarray) -> np.ndarray:
    """The peer: the same closed form, vectorized with NumPy broadcasting."""
    u = 1.0 + alpha[:, None] * w[None, :]
    g = 2.0 * np.mean(inputs ** 2) * depth * u ** (depth - 1) * (u ** depth - target)
    return np.log((alpha[:, None] * g) ** 2 + (w[None, :] * g) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,400,1000")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    problem = toy.toy_problem()
    inputs = np.asarray(problem.inputs)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        w = np.linspace(-2.5, 2.5, n)
        alpha = np.linspace(-1.5, 1.5, n)
        wj, aj = jnp.asarray(w), jnp.asarray(alpha)
        jax_s = median_time(lambda: toy.gradient_grid(problem, wj, aj).log_grad_norm.block_until_ready(),
                      args.repeats)
        numpy_s = median_time(lambda: numpy_grid(inputs, 50.0, 5, w, alpha), args.repeats)
        shifted = jnp.asarray(w + 1e-3)
        start = time.perf_counter()
        toy.gradient_grid(problem, shifted, aj).log_grad_norm.block_until_ready()
        second_call_s = time.perf_counter() - start  # new values, same shapes: no recompile
        ours = np.asarray(toy.gradient_grid(problem, wj, aj).log_grad_norm)
        gw, ga = toy.autodiff_gradient(problem, wj[None, :], aj[:, None])
        auto = np.log(np.asarray(gw) ** 2 + np.asarray(ga) ** 2)
        peer = numpy_grid(inputs, 50.0, 5, w, alpha)
        # |Δ log‖∂C‖²| where the gradient is above rounding (it vanishes on the zero-loss curve).
        finite = np.isfinite(peer) & (peer > np.log(1e-12))
        rows.append(dict(
            grid=f"{n}x{n}", points=n * n, jax_jit_s=jax_s, numpy_s=numpy_s,
            speedup_vs_numpy=numpy_s / jax_s, jax_second_call_new_values_s=second_call_s,
            max_abs_diff_vs_numpy=float(np.max(np.abs(ours - peer)[finite])),
            max_abs_diff_vs_autodiff=float(np.max(np.abs(ours - auto)[finite]))))
        print(f"{n}x{n}: jax {jax_s * 1e3:.3f} ms, numpy {numpy_s * 1e3:.3f} ms, "
              f"x{numpy_s / jax_s:.1f}; |diff| numpy {rows[-1]['max_abs_diff_vs_numpy']:.1e}, "
              f"autodiff {rows[-1]['max_abs_diff_vs_autodiff']:.1e}")
    result = dict(benchmark="toy gradient grid log ||dC||^2, closed form (Figure 2)",
                  dtype="float64", repeats=args.repeats, statistic="median wall seconds",
                  jax=jax.__version__, numpy=np.__version__, backend=jax.default_backend(),
                  cpu_count=os.cpu_count(), machine=platform.machine(),
                  load_average_1min=os.getloadavg()[0], rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, result, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
