"""Spectra of a batch of inputs sharded over all devices (`jax.sharding`).

The spectra of different inputs are independent, so a batch splits over a 1-D device mesh
along its leading axis: each device gets its slice of the inputs (and their PRNG keys) and a
copy of the parameters, runs the vmapped per-input spectrum with no communication
(dispatched asynchronously, so all devices work at once), and the parts are assembled into
one array with `NamedSharding(mesh, P("batch"))`. (A single SPMD program — `jax.shard_map`
or `jit` with input shardings — wedged the CPU runtime with the Lanczos loops under
`--xla_force_host_platform_device_count=4` in jax 0.10.2; per-device dispatch does not, at
the cost of one compilation per device.) The same code runs on one CPU, several GPUs or a TPU
slice; on CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before importing
jax) simulates four devices. Results equal those of `spectrum_fn(..., batched=True)` on one
device: each input i gets the key `split(key, batch)[i]` either way.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from isometry._jacobian import JacobianTooLargeError, check_floating
from isometry._spectrum import _raise_if_nonfinite, _raise_if_nonfinite_values, spectrum_fn

__all__ = ["batch_mesh", "sharded_spectrum_fn"]

AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "batch" over `devices` (default: all of `jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(devices, (AXIS,))


def sharded_spectrum_fn(apply_fn: Callable, method: str = "auto", *, mesh: Mesh | None = None,
                        **options) -> Callable:
    """`(params, x, key=None) -> spectra` of every input of a batch, split over `mesh`.

    Args:
      apply_fn: `(params, x) -> y` for one input x.
      method: "auto", "dense" or "lanczos", as in `spectrum_fn`.
      mesh: a 1-D mesh with axis "batch" (default: `batch_mesh()`, all devices).
      **options: passed to `spectrum_fn` (mode, chunk_size, memory_budget, lanczos options).

    Returns:
      `sfn(params, x, key=None)`: x has a leading batch axis on every leaf (any size: the
      batch is padded to a multiple of the device count, and the padding dropped); the
      result (a `Spectrum` or `LanczosSpectrum` with that batch axis) is sharded over the
      mesh. Raises FloatingPointError when a Jacobian has NaN/Inf entries.

    Example:
      >>> sfn = iso.sharded_spectrum_fn(apply_fn)          # all devices
      >>> spec = sfn(params, xs)                           # xs: (batch, ...) inputs
    """
    mesh = batch_mesh() if mesh is None else mesh
    if mesh.axis_names != (AXIS,):
        raise ValueError(f"the mesh must be 1-D with axis {AXIS!r}, got axes {mesh.axis_names}; "
                         f"build it with isometry.batch_mesh(devices)")
    single = spectrum_fn(apply_fn, method, batched=False, **options)
    n_dev = mesh.devices.size

    local = jax.jit(jax.vmap(single.jitted, in_axes=(None, 0, 0)))
    devices = list(mesh.devices.flat)
    sharding = NamedSharding(mesh, P(AXIS))

    def assemble(*parts):  # one global array, sharded over the mesh, from per-device parts
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        return jax.make_array_from_single_device_arrays(shape, sharding, list(parts))

    def sfn(params, x, key=None):
        check_floating(x)
        sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
                 for leaf in jax.tree_util.tree_leaves(x)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"x needs the same leading batch axis on every leaf; got leading "
                             f"sizes {sorted(map(str, sizes))}")
        (batch,) = sizes
        if batch == 0:
            raise ValueError("the batch is empty (leading axis of size 0): pass at least one input")
        # Fail fast (dense size check) without computing anything.
        x0 = jax.tree_util.tree_map(lambda a: a[0], x)
        try:
            jax.eval_shape(lambda p, xx: single.jitted(p, xx, None), params, x0)
        except (TypeError, ValueError) as err:
            if isinstance(err, JacobianTooLargeError) or "empty" in str(err):
                raise
            shapes = [tuple(jnp.shape(a)) for a in jax.tree_util.tree_leaves(x)]
            raise ValueError(
                f"sharded_spectrum_fn takes a batch (one spectrum per entry of x's leading axis), "
                f"and the model fails on one entry x[0] (input shapes {shapes} without their "
                f"first axis): for a single input pass x[None]; the model said: "
                f"{str(err).splitlines()[0]}") from None
        if key is None:  # as spectrum_fn(batched=True): PRNGKey(0) for every input
            keys = jax.vmap(lambda _: jax.random.key(0))(jnp.arange(batch))
        else:
            keys = jax.random.split(key, batch)
        pad = -batch % n_dev
        if pad:  # repeat the last input; its spectra are dropped below
            x, keys = jax.tree_util.tree_map(
                lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), (x, keys))
        size = (batch + pad) // n_dev
        parts = []
        for i, device in enumerate(devices):  # dispatched asynchronously: devices run at once
            chunk = jax.tree_util.tree_map(lambda a: a[i * size:(i + 1) * size], (x, keys))
            parts.append(local(jax.device_put(params, device), *jax.device_put(chunk, device)))
        spec, counts = jax.tree_util.tree_map(assemble, *parts)
        if pad:  # on the host: slicing across devices is a collective
            spec, counts = jax.tree_util.tree_map(lambda a: jnp.asarray(jax.device_get(a)[:batch]),
                                                  (spec, counts))
        _raise_if_nonfinite_values(counts)
        _raise_if_nonfinite(spec)
        return spec

    sfn.mesh = mesh
    return sfn
