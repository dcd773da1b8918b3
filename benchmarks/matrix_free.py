"""Matrix-free spectra (Golub–Kahan + SLQ + Hutchinson) against the dense engine.

    python benchmarks/matrix_free.py                 # (a) d = 16,384 and (b) d = 65,536
    python benchmarks/matrix_free.py --parts a       # only (a)
    python benchmarks/matrix_free.py --quick         # small sizes, a smoke run
    python benchmarks/matrix_free.py --parts a --dense-jacobian   # (a) against the measured dense J

(a) a 64-layer ReZero Transformer (α = 0.1), d_model 256, 64 tokens (d = 16,384): time for the
    top-10 σ + density + chi, against the dense engine on the same model. The full dense run
    (16,384 JVPs and a 16,384² SVD) takes far too long on a 2-core machine, so it is timed in
    pieces: the Jacobian for a chunk of `--dense-chunk` columns (scaled by d / chunk) and the
    SVD of a random n × n matrix at n = `--svd-n` (scaled by (d / n)³). With
    `--dense-jacobian` the whole dense J is computed and timed (only the SVD is estimated) and
    the top 10 σ are compared with ARPACK's on that J; with `--dense-full` the whole dense
    spectrum is computed (hours) and the top 10 compared.
(b) d_model 512, 128 tokens (d = 65,536), matrix-free only, with lighter settings: wall time
    and peak memory (max RSS of the process).

Float32 throughout (as a user would run it). Compilation is excluded (a warm-up call on the
same shapes first); every timing blocks on the result. Writes
benchmarks/results/matrix_free.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import isometry as iso
import models
from isometry._io import write_json
from _timing import machine as timing_machine

RESULTS = os.path.join(os.path.dirname(__file__), "results", "matrix_free.json")


def transformer(d_model: int, depth: int, heads: int, ffn: int):
    net = models.Transformer(depth, d_model, heads=heads, ffn=ffn, variant="rezero",
                             alpha_init=0.1, rngs=nnx.Rngs(0))
    net.eval()
    return iso.from_nnx(net)


def timed(fn, *args, repeats: int = 1):
    """Seconds of the best of `repeats` calls after one warm-up (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matrix_free(apply_fn, params, x, options):
    sfn = iso.spectrum_fn(apply_fn, "lanczos", **options)
    seconds, spec = timed(lambda: sfn(params, x, jax.random.key(1)))
    return seconds, spec, dict(
        seconds=seconds, options=options,
        top10=np.asarray(spec.top_singular_values).tolist(),
        top10_residual_bounds=np.asarray(spec.error_bounds).tolist(),  # the key older results use
        top10_certified_to_1e_3=bool(np.all(np.asarray(spec.relative_error_bounds) <= 1e-3)),
        chi=float(spec.chi), chi_stderr=float(spec.chi_stderr),
        mean_log=float(spec.mean_log), std_log=float(spec.std_log),
        sigma_min_estimate=float(spec.sigma_min))


def dense_pieces(apply_fn, params, x, chunk: int, svd_n: int):
    """Dense cost from pieces: `chunk` Jacobian columns and an svd_n² SVD, scaled up."""
    d = x.size
    x_flat = x.reshape(-1)

    @jax.jit
    def columns(params, x_flat):
        _, jvp = jax.linearize(lambda v: apply_fn(params, v.reshape(x.shape)).reshape(-1), x_flat)
        return jax.vmap(jvp)(jnp.eye(chunk, d, dtype=x_flat.dtype))

    t_cols, _ = timed(columns, params, x_flat)
    jac = t_cols * d / chunk
    svd = svd_piece(d, svd_n)
    return dict(method="pieces", jacobian_chunk_columns=chunk, jacobian_chunk_seconds=t_cols,
                jacobian_seconds_estimate=jac, **svd, seconds=jac + svd["svd_seconds_estimate"],
                how=f"J: {chunk} JVP columns timed, x {d}/{chunk}; SVD: {svd_n}^2 timed, "
                    f"x ({d}/{svd_n})^3")


def svd_piece(d: int, svd_n: int) -> dict:
    """The SVD of a d × d J estimated from a timed svd_n² SVD, scaled by (d / svd_n)³."""
    a = jax.random.normal(jax.random.key(0), (svd_n, svd_n), jnp.float32)
    t_svd, _ = timed(jax.jit(lambda a: jnp.linalg.svd(a, compute_uv=False)), a)
    return dict(svd_n=svd_n, svd_seconds=t_svd, svd_seconds_estimate=t_svd * (d / svd_n) ** 3)


def dense_jacobian_measured(apply_fn, params, x, chunk: int, svd_n: int):
    """The whole dense J by the engine (compiled first, then one timed call), its top 10 σ
    by ARPACK (`scipy.sparse.linalg.svds`, float64 products) as the reference, and the SVD's
    cost from an svd_n² SVD scaled by (d / svd_n)³ (the full SVD takes about an hour here)."""
    from scipy.sparse.linalg import svds

    from isometry.linalg._jacobian import dense_jacobian

    jac = jax.jit(lambda p, x: dense_jacobian(lambda z: apply_fn(p, z), x, mode="fwd",
                                              chunk_size=chunk, transposed_ok=True))
    compiled = jac.lower(params, x).compile()
    start = time.perf_counter()
    jt = jax.block_until_ready(compiled(params, x))
    t_jac = time.perf_counter() - start
    jt = np.asarray(jt, dtype=np.float64)
    chi = float(np.sum(jt * jt) / jt.shape[1])
    top = np.sort(svds(jt, k=10, tol=1e-12, return_singular_vectors=False))[::-1]
    del jt
    svd = svd_piece(x.size, svd_n)
    return dict(method="jacobian measured, SVD estimated", jacobian_seconds=t_jac, **svd,
                seconds=t_jac + svd["svd_seconds_estimate"],
                seconds_lower_bound=t_jac, top10=top.tolist(), chi=chi,
                how=f"J: all {x.size} columns by the engine's dense_jacobian (chunks of {chunk}), "
                    f"timed once after compiling; top 10 σ of that J by ARPACK in float64; SVD: "
                    f"{svd_n}^2 timed, x ({x.size}/{svd_n})^3")


def part_a(args):
    d_model, seq = (64, 16) if args.quick else (256, 64)
    depth = 4 if args.quick else 64
    apply_fn, params = transformer(d_model, depth, heads=4, ffn=4 * d_model)
    x = jax.random.normal(jax.random.key(0), (seq, d_model), jnp.float32)
    seconds, spec, record = matrix_free(apply_fn, params, x, {})
    out = dict(d=seq * d_model, d_model=d_model, tokens=seq, depth=depth, alpha=0.1,
               matrix_free=record)
    if args.dense_jacobian:
        out["dense"] = dense_jacobian_measured(apply_fn, params, x, args.dense_chunk, args.svd_n)
        top = np.asarray(out["dense"]["top10"])
        out["top10_max_rel_err_vs_dense"] = float(
            np.max(np.abs(np.asarray(spec.top_singular_values) - top) / top))
        out["chi_rel_err_vs_dense"] = abs(float(spec.chi) / out["dense"]["chi"] - 1)
        out["speedup_lower_bound"] = out["dense"]["seconds_lower_bound"] / seconds
    elif args.dense_full or args.quick:
        sfn = iso.spectrum_fn(apply_fn, "dense", chunk_size=args.dense_chunk,
                              memory_budget=64 * 2**30)
        compiled = sfn.program.lower(params, x, None).compile()  # one timed call, no warm-up run
        start = time.perf_counter()
        dense, _ = jax.block_until_ready(compiled(params, x, None))  # (spectrum, NaN counts)
        t = time.perf_counter() - start
        top = np.asarray(dense.singular_values[:10])
        out["dense"] = dict(method="full", seconds=t, top10=top.tolist(), chi=float(dense.chi),
                            n_nonfinite=int(dense.n_nonfinite),
                            how="the engine's dense spectrum_fn (J in chunks + SVD), compiled "
                                "first, then one timed call")
        out["top10_max_rel_err_vs_dense"] = float(
            np.max(np.abs(np.asarray(spec.top_singular_values) - top) / top))
        out["chi_rel_err_vs_dense"] = abs(float(spec.chi) / float(dense.chi) - 1)
    else:
        out["dense"] = dense_pieces(apply_fn, params, x, args.dense_chunk, args.svd_n)
        out["top10_max_rel_err_bound"] = float(np.max(
            np.asarray(spec.relative_error_bounds)))
    out["speedup"] = out["dense"]["seconds"] / seconds
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def part_b(args):
    d_model, seq = (64, 32) if args.quick else (512, 128)
    depth = 4 if args.quick else 64
    apply_fn, params = transformer(d_model, depth, heads=8, ffn=4 * d_model)
    x = jax.random.normal(jax.random.key(0), (seq, d_model), jnp.float32)
    options = dict(max_steps=64, num_steps=24, num_probes=4, chi_probes=16)
    start = time.perf_counter()
    _, _, record = matrix_free(apply_fn, params, x, options)
    total = time.perf_counter() - start  # includes the warm-up (compile + one run)
    return dict(d=seq * d_model, d_model=d_model, tokens=seq, depth=depth, alpha=0.1,
                matrix_free=record, wall_seconds_including_warmup=total,
                peak_rss_gib=peak_rss_gib(), under_10_min=total < 600,
                under_6_gib=peak_rss_gib() < 6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ab", help="which parts to run: a, b or ab")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--dense-full", action="store_true", help="(a): the whole dense run")
    parser.add_argument("--dense-jacobian", action="store_true",
                        help="(a): compute and time the whole dense J (~40 min on 2 cores), take "
                             "its top 10 σ by ARPACK; only the SVD's time is estimated")
    parser.add_argument("--dense-chunk", type=int, default=256)
    parser.add_argument("--svd-n", type=int, default=4096)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    results = {}
    if os.path.exists(args.out):  # keep the part(s) not rerun now
        with open(args.out) as f:
            results = json.load(f)
    machine = timing_machine()
    results.update(machine=machine, quick=args.quick)
    # part (a) is kept per dense method, so a measured run does not replace the estimate
    a_key = "a" + ("_dense_full" if args.dense_full else
                   "_dense_jacobian" if args.dense_jacobian else "")
    for name, key, part in (("a", a_key, part_a), ("b", "b", part_b)):
        if name in args.parts:
            results[key] = dict(part(args), machine=machine)
            print(json.dumps(results[key], indent=1))
    print(f"wrote {write_json(args.out, results, indent=1)}")


if __name__ == "__main__":
    main()
