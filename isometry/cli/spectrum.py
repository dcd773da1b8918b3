"""`isometry spectrum`: Jacobian spectra of models at initialization, as a table, JSON and PNG.

With no arguments: the six fully connected variants of Table 1 at depth 32, width 256 (the
nets of the paper's Figure 5), on 4 Gaussian inputs each. Both engines' results are reported
through `isometry.SpectrumResult` (`engine`, `exact`, `statistics()`); the matrix-free one's
top k go out as "top_singular_values", never as the spectrum.

JAX, the models and plotting are imported inside the functions that use them: `isometry
--help` and argument errors must answer without loading them.
"""

from __future__ import annotations

import os
import sys
import time

from isometry._io import json_text, write_json
from isometry.cli import UsageError, output_dir
from isometry.cli._devices import add_mesh_arguments, check_device_args, mesh_from_args
from isometry.cli._engine_args import add_engine_args, engine_from_args
from isometry.cli._model_args import add_model_args, check_model_args

#: Share of σ below the dtype's resolution above which the command warns (and says --x64).
RESOLUTION_WARNING = 0.01

COLUMNS = ("chi", "mean_log", "std_log", "sigma_max", "sigma_min", "isometry_share")
HEADER = ("model", "variant", "depth", "chi", "mean ln s", "std ln s", "s_max", "s_min",
          "share[.5,2]", "engine")


def register(sub) -> None:
    p = sub.add_parser("spectrum", help="Jacobian singular-value spectra of models at init",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--samples", type=int, default=4, help="Gaussian inputs per model (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default: 0)")
    add_engine_args(p, default="auto")
    p.add_argument("--x64", action="store_true",
                   help="float64 weights and inputs (resolves singular values below ~1e-7)")
    p.add_argument("--bins", type=int, default=50, help="histogram bins (default: 50)")
    p.add_argument("--out", default="isometry-spectrum",
                   help="directory for spectra.png and spectra.json (default: ./isometry-spectrum)")
    p.add_argument("--layerwise", action="store_true",
                   help="also profile chi_l and log-sigma quantiles of d x_l / d x_0 against "
                        "depth l (layerwise.png, layerwise.json); dense when it fits, else "
                        "chi_l only (Hutchinson)")
    p.add_argument("--json", action="store_true",
                   help="print the records as JSON on stdout (the table goes to stderr)")
    add_mesh_arguments(p, "one SPMD program over a device mesh: the probe inputs split over "
                          "'data', the parameters of fc/transformer models over 'model' "
                          "(tensor parallel); default: one device")
    p.set_defaults(func=run, seq_len=4)  # Figure 4a: Jacobians of (4, d_model) sequences


def _row(values) -> str:
    return " ".join(f"{v:>11}" if i > 2 else f"{v:<10}" for i, v in enumerate(values))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def compute(args):
    """[(record, Spectrum)] for every (depth, variant) the arguments ask for."""
    return compute_timed(args)[0]


def compute_timed(args):
    """`compute`'s results and the run's timing: {"import_s", "compile_s", "compute_s",
    "compilations"}: seconds from the process start to the computation (interpreter, imports
    of JAX, the models and the engine, argument parsing; Linux only, else the imports done
    here), compiling the spectrum programs, running them; and how many were compiled."""
    start = time.perf_counter()
    import jax

    import isometry as iso
    import models  # noqa: F401  (imported before the clock stops: part of import_s)
    from isometry.cli import _zoo
    age = _process_age()
    timing = dict(import_s=time.perf_counter() - start if age is None else age, compile_s=0.0,
                  compute_s=0.0, compilations=0)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    mesh = mesh_from_args(args)
    kind, variants = _zoo.resolve(args)
    _check_counts(args)
    key = jax.random.key(args.seed)
    x = kind.probe_inputs(args, key, args.samples, _zoo.param_dtype(args))
    programs: dict = {}  # one compiled program per shape signature
    results = []
    for depth, variant in _progress([(d, v) for d in _zoo.depths(args) for v in variants]):
        module = _build(kind, args, variant, depth, mesh)
        try:
            spec, cost = _spectrum(args, module, x, mesh, programs)
        except (iso.JacobianTooLargeError, FloatingPointError, ValueError) as err:
            raise UsageError(f"{args.model} {variant} depth {depth}: {err}") from None
        for name in ("compile_s", "compute_s"):
            timing[name] += cost[name]
        timing["compilations"] += cost["compiled"]
        record = dict(model=args.model, variant=variant, depth=depth, method=args.method,
                      engine=spec.engine,
                      samples=args.samples, seed=args.seed, dtype=str(x.dtype),
                      alpha_init=args.alpha_init, **_model_settings(args))
        record.update(_mean_summary(spec))
        if spec.exact:
            record["singular_values"] = jax.device_get(spec.singular_values).tolist()
        else:
            record.update(_matrix_free_fields(spec))
        record["timing"] = cost
        results.append((record, spec))
    return results, timing


def _process_age() -> float | None:
    """Seconds since this process started (from /proc: Linux), None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _check_counts(args) -> None:
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    if args.bins < 1:
        raise UsageError(f"--bins must be at least 1, got {args.bins}")
    for name in ("k", "lanczos_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def _progress(jobs):
    from tqdm import tqdm

    return tqdm(jobs, desc="spectra", unit="model", file=sys.stderr,
                disable=len(jobs) < 3 or not sys.stderr.isatty())


def _build(kind, args, variant, depth, mesh):
    from isometry.cli import _zoo

    if mesh is None:
        module = _zoo.build_model(kind, args, variant, depth, args.seed)
    else:
        import models
        with models.sharded(mesh):  # parameters split over "model" (fc, transformer)
            module = _zoo.build_model(kind, args, variant, depth, args.seed)
    module.eval()
    return module


def _spectrum(args, module, x, mesh, programs: dict):
    """(spectrum, {"compile_s", "compute_s", "compiled"}) of one model's Jacobians at x.

    A fully connected net goes in as data (`models.fc_blocks_as_data`): all its variants of
    one depth and width share one compiled program. Other models are compiled per variant: their
    variants differ in structure (a ResNet's or Transformer's norms and residual paths are
    modules with their own parameter trees). On a mesh the sharded program is timed as a whole
    (its compile and compute under compute_s).
    """
    import jax

    import isometry as iso
    import models
    from isometry.linalg._jacobian import flat_sizes

    if (mesh is None and args.model == "fc" and getattr(module, "input_proj", None) is None
            and getattr(module, "output_proj", None) is None):
        norm = getattr(module.blocks.layers, "norm", None)
        eps = models.FC_NORM_EPSILON if norm is None else norm.epsilon
        apply_fn = models.fc_blocks_apply_fn(args.activation, eps)
        params = models.fc_blocks_as_data(module)
        sign = ("fc", args.activation, eps)
    else:
        (apply_fn, params), sign = iso.from_nnx(module), None
    n_in, n_out, _ = flat_sizes(lambda xx: apply_fn(params, xx), x[0])
    engine = engine_from_args(args, min(n_in, n_out))
    if mesh is not None:
        start = time.perf_counter()
        spec = iso.to_host(iso.sharded_spectrum_fn(apply_fn, engine=engine, mesh=mesh)(params, x))
        return spec, dict(compile_s=0.0, compute_s=time.perf_counter() - start, compiled=0)
    shapes = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), params)
    sign = None if sign is None else (sign, str(jax.tree_util.tree_structure(params)),
                                      str(shapes), engine)
    compiled, compile_s = programs.get(sign), 0.0
    if compiled is None:
        start = time.perf_counter()
        sfn = iso.spectrum_fn(apply_fn, engine=engine, batched=True)
        compiled = sfn.compile(params, x)
        compile_s = time.perf_counter() - start
        if sign is not None:
            programs[sign] = compiled
    start = time.perf_counter()
    spec = jax.block_until_ready(compiled(params, x))
    return spec, dict(compile_s=compile_s, compute_s=time.perf_counter() - start,
                      compiled=int(compile_s > 0))


def _matrix_free_fields(spec) -> dict:
    """What the matrix-free engine knows, per probe input, with what each number is."""
    import numpy as np

    from isometry.train._tracking import MATRIX_FREE_ESTIMATES

    return dict(top_singular_values=np.asarray(spec.top_singular_values).tolist(),
                error_bounds=np.asarray(spec.error_bounds).tolist(),
                converged=np.asarray(spec.converged).tolist(), rtol=spec.rtol,
                chi_stderr=np.asarray(spec.chi_stderr).tolist(),
                sigma_min_residual=np.asarray(spec.sigma_min_residual).tolist(),
                figure=spec.statistics(), estimates=MATRIX_FREE_ESTIMATES)


def compute_layerwise(args) -> dict:
    """{label: profile} for every (depth, variant): the Spectrum of every ∂x_l/∂x_0 with a depth
    axis (dense, when it fits and --method is not lanczos) or an array of chi_l (Hutchinson)."""
    import jax
    from flax import nnx

    import isometry as iso
    from isometry.cli import _zoo

    kind, variants = _zoo.resolve(args)
    x = kind.probe_inputs(args, jax.random.key(args.seed), args.samples, _zoo.param_dtype(args))
    profiles, depths = {}, _zoo.depths(args)
    for depth in depths:
        for variant in variants:
            module = kind.build(args, variant, depth, nnx.Rngs(args.seed))
            module.eval()
            embed_fn, states_fn, params = iso.from_stack(module)
            x0 = jax.vmap(embed_fn, in_axes=(None, 0))(params, x)
            label = f"{variant} L={depth}" if len(depths) > 1 else variant
            try:
                if args.method == "lanczos":
                    raise iso.JacobianTooLargeError("matrix-free requested")
                profiles[label] = iso.layerwise_spectrum_fn(states_fn, batched=True)(params, x0)
            except iso.JacobianTooLargeError:
                profiles[label] = iso.layerwise_chi_fn(states_fn, batched=True)(
                    params, x0, jax.random.key(args.seed))[0]
            except FloatingPointError as err:
                raise UsageError(f"{args.model} {variant} depth {depth}: {err}") from None
    return profiles


def _layerwise_records(profiles: dict) -> dict:
    import isometry as iso

    out = {}
    for label, profile in profiles.items():
        summary = iso.depth_profile(profile, (0.1, 0.5, 0.9))
        out[label] = dict(chi=summary["chi"].tolist())
        if "log10_sigma_quantiles" in summary:
            out[label]["log10_sigma_quantiles"] = {
                q: row.tolist() for q, row in zip((0.1, 0.5, 0.9),
                                                  summary["log10_sigma_quantiles"])}
    return out


def _model_settings(args) -> dict:
    keys = ("width", "activation", "seq_len", "d_model", "heads", "ffn", "blocks")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def _mean_summary(spec) -> dict:
    """Each statistic averaged over the probe inputs (per-input values kept under `per_input`)."""
    import numpy as np

    stats = spec.to_dict()  # strict JSON: a non-finite value is None (nan in the mean)
    per_input = {k: stats[k] for k in spec.statistic_names}
    out = {k: float(np.mean(np.asarray(v, np.float64))) for k, v in per_input.items()}
    out["per_input"] = per_input
    return out


#: How the table marks numbers of the matrix-free engine: estimates (~) and bounds (<=, >=).
_MATRIX_FREE_MARKS = {"chi": "~", "mean_log": "~", "std_log": "~", "sigma_min": "<=",
                      "isometry_share": "~"}


def _cell(record, column) -> str:
    text = _fmt(record[column]) if record[column] is not None else "n/a"
    if record.get("engine") == "lanczos":
        text = _MATRIX_FREE_MARKS.get(column, "") + text
    return text


def precision_warnings(records) -> list[str]:
    """One line per record whose σ are largely below the dtype's resolution."""
    lines = []
    for r in records:
        share = r.get("zero_share")  # below σ_max·eps·n, exact zeros included
        if share is None or share != share:
            continue
        if share > RESOLUTION_WARNING:
            advice = ("rerun with --x64 (same --seed: same weights and inputs)"
                      if r["dtype"] != "float64" else "they are zero to float64 precision: J is rank-deficient there "
                      "(e.g. the mean direction a LayerNorm removes)")
            effect = "counted as zero (zero_share) and left out of mean/std ln s"
            lines.append(f"isometry spectrum: warning: {r['variant']} depth {r['depth']}: "
                         f"{share:.0%} of the singular values are below {r['dtype']} resolution "
                         f"(sigma_max * eps * n), {effect}; {advice}")
    return lines


def check_args(args) -> None:
    """Every check the parsed arguments alone allow, before jax is imported."""
    check_model_args(args)
    _check_counts(args)
    check_device_args(args)
    output_dir(args.out)  # before computing: a path that cannot be written fails at once


def run(args) -> int:
    check_args(args)
    import jax

    from isometry import plot

    results, timing = compute_timed(args)
    if jax.process_index() != 0:  # one of several processes: process 0 prints and writes
        return 0
    table = sys.stderr if args.json else sys.stdout
    print(_row(HEADER), file=table)
    for record, _ in results:
        print(_row([record["model"], record["variant"], record["depth"],
                    *(_cell(record, c) for c in COLUMNS), record["engine"]]), file=table)
    records = [r for r, _ in results]
    if any(r["engine"] == "lanczos" for r in records):
        print("matrix-free rows: ~ estimate, <= upper bound, >= lower bound (see 'estimates' in spectra.json)",
              file=table)
    for line in precision_warnings(records):
        print(line, file=sys.stderr)
    panels: dict[str, dict[str, object]] = {}
    for record, spec in results:
        panels.setdefault(f"{record['model']} depth {record['depth']}", {})[record["variant"]] = spec
    png = plot.save(plot.spectrum_histograms(panels, bins=args.bins), os.path.join(args.out, "spectra.png"))
    path = os.path.join(args.out, "spectra.json")
    doc = {"records": records, "timing": timing}
    write_json(path, doc)
    print(f"wrote {png} and {path}", file=sys.stderr)
    if getattr(args, "layerwise", False):
        profiles = compute_layerwise(args)
        title = f"{args.model}: layer-by-layer Jacobians d x_l / d x_0"
        import isometry as iso  # as the other functions of this module do (lazy CLI imports)

        summaries = {label: iso.depth_profile(profile) for label, profile in profiles.items()}
        lpng = plot.save(plot.layerwise_profiles(summaries, title=title),
                         os.path.join(args.out, "layerwise.png"))
        lpath = os.path.join(args.out, "layerwise.json")
        write_json(lpath, {"profiles": _layerwise_records(profiles)})
        print(f"wrote {lpng} and {lpath}", file=sys.stderr)
    if args.json:  # the same document as spectra.json
        sys.stdout.write(json_text(doc) + "\n")
    return 0
