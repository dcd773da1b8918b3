"""Numbers the toolkit computed before the "one library" restructuring, to hold the new code to.

`compute()` runs the public API on fixed float64 weights and returns a flat
{name: float64 array}: dense spectra and χ of the paper's fully connected and Transformer
variants, the matrix-free engine's top σ, density nodes/weights and χ (fixed key), the top-k
with its error bounds, layer-by-layer χ and spectra, a diagnosis's measurements, the toy
model's gradients and the losses of a few training steps. `tests/data/reference.npz` holds
what `compute()` returned on the code before the change (`python tests/reference.py`
rewrites it, which only a change that means to alter these numbers may do);
`tests/test_reference.py` compares today's values with it at 1e-12.
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import isometry as iso
import isometry.train
import models
from isometry.spectrum._layerwise import state_runs

PATH = os.path.join(os.path.dirname(__file__), "data", "reference.npz")


def _fc(variant: str, seed: int = 0):
    kw = {"alpha_init": 0.3} if variant == "rezero" else {}
    return models.FullyConnected(6, 12, variant=variant, in_features=12, out_features=12,
                                 activation="tanh", param_dtype=jnp.float64, rngs=nnx.Rngs(seed), **kw)


def _spectra(out: dict) -> None:
    x = jax.random.normal(jax.random.PRNGKey(1), (12,), jnp.float64)
    for variant in ("plain", "residual", "norm", "rezero"):
        apply_fn, params = iso.from_nnx(_fc(variant))
        spec = iso.spectrum_fn(apply_fn, method="dense")(params, x)
        out[f"dense/{variant}/sv"] = spec.singular_values
        out[f"dense/{variant}/chi"] = spec.chi
        out[f"dense/{variant}/mean_log"] = spec.mean_log
    apply_fn, params = iso.from_nnx(_fc("plain"))
    fn = lambda v: apply_fn(params, v)  # noqa: E731
    lz = iso.lanczos_spectrum(fn, x, jax.random.PRNGKey(3), k=3, num_probes=4, num_steps=8)
    for name in ("top_singular_values", "nodes", "weights", "chi", "chi_stderr"):
        out[f"lanczos/{name}"] = getattr(lz, name)
    out["lanczos/residual_bounds"] = lz.error_bounds  # saved under the name it had then
    top = iso.top_singular_values(fn, x, k=3, key=jax.random.PRNGKey(5))
    out["top/values"] = top.singular_values
    out["top/error_bounds"] = top.error_bounds
    block = iso.top_singular_values(fn, x, k=3, key=jax.random.PRNGKey(5), block_size=2)
    out["top_block/values"] = block.singular_values
    out["hutchinson/chi"] = iso.hutchinson_chi(fn, x, jax.random.PRNGKey(7), num_probes=4)[0]


def _transformer(out: dict) -> None:
    for variant in ("prenorm", "rezero"):
        model = models.Transformer(2, 8, heads=2, ffn=16, vocab_size=16, variant=variant,
                                   alpha_init=0.2 if variant == "rezero" else 0.0, param_dtype=jnp.float64, rngs=nnx.Rngs(2))
        embed_fn, states_fn, params = iso.from_stack(model)
        x0 = embed_fn(params, jnp.array([1, 5, 9, 3]))
        last = lambda p, v: state_runs(states_fn(p, v))[-1][-1]  # noqa: E731
        spec = iso.jacobian_spectrum(lambda v: last(params, v), x0)
        out[f"transformer/{variant}/sv"] = spec.singular_values


def _layerwise(out: dict) -> None:
    embed_fn, states_fn, params = iso.from_stack(_fc("residual"))
    x0 = embed_fn(params, jax.random.normal(jax.random.PRNGKey(1), (12,), jnp.float64))
    specs = iso.layerwise_spectrum_fn(states_fn)(params, x0)
    out["layerwise/chi"] = specs.chi
    out["layerwise/sv"] = specs.singular_values
    chi, stderr = iso.layerwise_chi_fn(states_fn, num_probes=4)(params, x0, jax.random.PRNGKey(2))
    out["layerwise_hutchinson/chi"] = chi
    out["layerwise_hutchinson/stderr"] = stderr


def _diagnosis(out: dict) -> None:
    model = _fc("rezero")
    x = jax.random.normal(jax.random.PRNGKey(4), (12,), jnp.float64)
    d = iso.diagnose(model, x=x)
    for name in ("chi_profile", "growth_rate", "growth_rate_stderr", "depth_scale",
                 "resolution_share"):
        out[f"diagnose/{name}"] = getattr(d, name)
    out["diagnose/alpha_grads"] = np.concatenate([np.ravel(v) for v in d.alpha_grads.values()])
    out["diagnose/codes"] = np.array([float(sum(map(ord, c))) for c in d.codes])


def _toy(out: dict) -> None:
    problem = iso.toy.toy_problem(depth=8)
    out["toy/loss"] = iso.toy.loss(problem, jnp.asarray(0.3), jnp.asarray(0.7))
    out["toy/grads"] = jnp.stack(iso.toy.gradient(problem, jnp.asarray(0.3), jnp.asarray(0.7)))


def _training(out: dict) -> None:
    from isometry.train import TrainConfig, train
    data = iso.data.SyntheticImages(shape=(12,), num_classes=4, task_seed=1)
    model = models.FullyConnected(4, 12, variant="rezero", in_features=12, out_features=4,
                                  rngs=nnx.Rngs(0))
    config = TrainConfig(steps=6, batch_size=8, optimizer="adagrad", lr=0.05, eval_every=3,
                         eval_batches=1)
    with tempfile.TemporaryDirectory() as run_dir:
        train(model, data, config, run_dir=run_dir, log_every=1, probes=2, track_every=3,
              progress=False, stall_timeout=None)
        records = iso.read_metrics(run_dir)
        sv = [isometry.train.read_spectrum(run_dir, r) for r in records if "spectrum_file" in r]
    out["train/losses"] = [r["loss"] for r in records if "loss" in r]
    out["train/chi"] = [r["spectrum"]["chi"] for r in records if "spectrum" in r]
    out["train/sv"] = np.stack(sv)
    out["train/eval_loss"] = [r["eval_loss"] for r in records if "eval_loss" in r]


def compute() -> dict[str, np.ndarray]:
    """Every reference value, as float64 numpy arrays (float64 enabled for the duration)."""
    with jax.enable_x64(True):
        out: dict = {}
        for part in (_spectra, _transformer, _layerwise, _diagnosis, _toy, _training):
            part(out)
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


if __name__ == "__main__":
    values = compute()
    np.savez(PATH, **values)
    print(f"wrote {len(values)} arrays to {PATH}", file=sys.stderr)
