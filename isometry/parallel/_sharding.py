"""Spectra of a batch of inputs as one SPMD program over a device mesh (`jax.sharding`).

The spectra of different inputs are independent, so a batch splits over the "data" axis of
a `jax.sharding.Mesh`: `sharded_spectrum_fn` compiles ONE program for all devices (`jax.jit`
of a `jax.shard_map` that is manual over "data"), in which every device runs the vmapped
per-input spectrum on its slice of the inputs and their PRNG keys. The matrix-free
Golub–Kahan loops are per device: a `while_loop` under `vmap` has a batched predicate
("has any input of the batch not converged?"), which over a globally sharded batch becomes
one all-reduce per iteration; inside `shard_map` the predicate covers the device's own
inputs only, so the compiled loop bodies hold no collective over "data"
(`collective_counts(...)` counts them in the compiled HLO).

Parameters are replicated over "data". Other mesh axes (e.g. "model") stay automatic: a model
whose parameters are sharded over "model" (`models.Transformer(..., mesh=mesh)`) keeps them
sharded, and XLA partitions every Jacobian-vector product over that axis (tensor-parallel
matmuls: collectives over "model" inside the loops, never a copy of all parameters on one
device).

A batch whose size does not divide the "data" axis is padded (the last input repeated) inside
the program and the padding dropped at its end. Results equal those of
`spectrum_fn(..., batched=True)` on one device: input i gets the key `split(key, batch)[i]`
either way (PRNGKey(0) for every input when no key is given).

Several processes (`jax.distributed.initialize`): every process calls `sfn` with the same
global batch (or with global `jax.Array`s); the program runs across all processes' devices
and `to_host` brings a result back as numpy on every process (write files from process 0).
On CPU, simulate devices with `jax.config.update("jax_num_cpu_devices", n)` before jax's
backend starts (`simulate_devices`).

CPU runtime: on a mesh of several CPU devices, every batched SVD/eigh of the program is
computed one matrix at a time (`isometry.linalg._lapack.unbatch_lapack`). jaxlib's CPU LAPACK
kernels split a batch into tasks on XLA's intra-op pool (max(#cores, #devices) threads, one
per running device program) and block until the tasks are done; devices that leave a
collective together and enter a batched SVD at once used all the pool's threads to wait, so
the program hung (about 1 run in 3 with a model-sharded dense spectrum, every device thread
in `ParallelBatchMap` -> `BlockingCounter::Wait`). A single matrix runs inline on its own
thread: no wait, same arithmetic. GPUs and TPUs keep their batched solvers.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from isometry.linalg._lapack import unbatch_lapack
from isometry.linalg._jacobian import JacobianTooLargeError, batch_size, check_floating
from isometry.spectrum._protocol import raise_if_nonfinite, raise_if_nonfinite_values
from isometry.spectrum._engine import Engine, engine_of
from isometry.spectrum._function import spectrum_fn

__all__ = ["DATA_AXIS", "MODEL_AXIS", "batch_mesh", "collective_counts", "device_mesh",
           "parse_mesh", "replicate", "shard_batch",
           "ShardedSpectrumFunction", "sharded_spectrum_fn", "simulate_devices", "to_host"]

#: The mesh axis a batch of inputs is split over.
DATA_AXIS = "data"
#: The mesh axis sharded models split their parameters over (`models.*(mesh=...)`).
MODEL_AXIS = "model"
#: HLO opcodes that move data between devices.
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def simulate_devices(n: int) -> None:
    """Makes the CPU backend offer `n` devices; call before jax starts its backend."""
    jax.config.update("jax_num_cpu_devices", int(n))


def device_mesh(data: int | None = None, model: int | None = None, *,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with a "data" axis (and a "model" axis when `model` is given), Auto axis types.

    Args:
      data: size of the "data" axis (default: all devices left after `model`).
      model: size of the "model" axis; None for a 1-D ("data",) mesh.
      devices: the devices (default `jax.devices()`, all processes' devices).

    `jax.make_mesh` defaults to Explicit axes since jax 0.9, under which loops whose initial
    carry is a fresh constant fail on a sharded batch; these axes are Auto.

    Example:
      >>> device_mesh(data=1).axis_names           # device_mesh(data=2, model=4): 8 devices
      ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    m = 1 if model is None else int(model)
    d = len(devices) // m if data is None else int(data)
    if d < 1 or m < 1 or d * m > len(devices):
        raise ValueError(f"a mesh of data={d} x model={m} needs {d * m} devices; "
                         f"{len(devices)} available")
    shape, names = ((d,), (DATA_AXIS,)) if model is None else ((d, m), (DATA_AXIS, MODEL_AXIS))
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices[:d * m])


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all of `jax.devices()`)."""
    return device_mesh(devices=devices)


def parse_mesh(text: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of a command-line spec such as "data=2,model=4" (or "data=8")."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in (DATA_AXIS, MODEL_AXIS) or not value.isdigit():
            raise ValueError(f"bad mesh {text!r}: use 'data=D' or 'data=D,model=M'")
        sizes[name] = int(value)
    return device_mesh(sizes.get(DATA_AXIS), sizes.get(MODEL_AXIS), devices=devices)


def _on_mesh(leaf, mesh: Mesh) -> bool:
    sharding = getattr(leaf, "sharding", None)
    return (isinstance(leaf, jax.Array) and isinstance(sharding, NamedSharding)
            and sharding.mesh.devices.shape == mesh.devices.shape
            and set(sharding.mesh.devices.flat) == set(mesh.devices.flat))


def _place(tree, mesh: Mesh, spec: P):
    """Every leaf not yet on `mesh` as a global array with `spec` (replicated: P()).

    Works across processes: each process provides the same full value and keeps its
    addressable shards (`jax.make_array_from_callback`).
    """
    sharding = NamedSharding(mesh, spec)

    def place(leaf):
        if leaf is None or _on_mesh(leaf, mesh):
            return leaf
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                 jax.dtypes.prng_key):
            data = _place(jax.random.key_data(leaf), mesh, spec)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(place, tree)


def replicate(tree, mesh: Mesh):
    """Every leaf of `tree` as a global array replicated over `mesh`; leaves already on the
    mesh (e.g. the parameters of a model built with `mesh=`) keep their sharding."""
    return _place(tree, mesh, P())


def shard_batch(tree, mesh: Mesh):
    """A batch (leading axis on every leaf) split over the mesh's "data" axis, for data-parallel
    training: each device holds batch / data rows; the jitted step averages over all of them.

    Raises:
      ValueError: when the batch size does not divide the "data" axis.
    """
    n = mesh.shape[DATA_AXIS]
    sizes = {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(tree)}
    if any(size % n for size in sizes):
        raise ValueError(f"a batch of {sorted(sizes)} does not split over the {n} devices of the "
                         f"{DATA_AXIS!r} axis: use a batch size that is a multiple of {n}")
    return _place(tree, mesh, P(DATA_AXIS))


def to_host(tree):
    """A (possibly multi-process, sharded) result as numpy arrays, on every process."""
    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.sharding.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(get, tree)


def sharded_spectrum_fn(apply_fn: Callable, method: str | Engine = "auto", *,
                        engine: Engine | None = None, mesh: Mesh | None = None,
                        device_batch: int | None = None, **settings) -> "ShardedSpectrumFunction":
    """`(params, x, key=None) -> spectra` of every input of a batch, one program over `mesh`.

    Args:
      apply_fn: `(params, x) -> y` for one input x.
      method, engine, **settings: the engine, as in `spectrum_fn` (validated here).
      mesh: a mesh with a "data" axis (default: `device_mesh()`, all devices on "data").
        Other axes (e.g. "model") are left to XLA: parameters sharded over them stay sharded.
      device_batch: at most this many inputs of a device's slice vmapped at once (the rest
        follow in a `lax.map`, bounding memory); None (default): the whole slice at once.
        On a mesh of several CPU devices the SVDs run one matrix at a time whatever this is
        (module docstring: batched LAPACK calls deadlock there).

    Returns:
      `sfn(params, x, key=None)`: x has a leading batch axis on every leaf (any size: the
      batch is padded to a multiple of the "data" size inside the program, and the padding
      dropped). params may be sharded over the mesh already (kept as they are); anything
      else is replicated. The result (a `Spectrum` or `LanczosSpectrum` with the batch axis)
      is sharded over "data" when the batch divides it, replicated otherwise. Raises
      FloatingPointError when a Jacobian has NaN/Inf entries. `sfn.program` is the program
      (`sfn.program.lower(*args, **static)` with `args, static = sfn.arguments(params, x,
      key)` for its HLO), `sfn.trace_count` how often it was traced, `sfn.compile(params, x)`
      compiles it ahead of time, `sfn.mesh` is the mesh.

    Example:
      >>> sfn = sharded_spectrum_fn(lambda w, x: jnp.tanh(w @ x), "dense", mesh=device_mesh())
      >>> sfn(jnp.eye(3), jnp.zeros((5, 3))).singular_values.shape   # 5 inputs, all devices
      (5, 3)
    """
    engine = engine_of(method if engine is None else engine, **settings)
    return ShardedSpectrumFunction(apply_fn, engine, device_mesh() if mesh is None else mesh,
                                   device_batch)


def _check_one_input(single: Callable, params, x) -> None:
    """Fails fast (dense size check, a model that does not take x[0]) computing nothing."""
    try:
        jax.eval_shape(single, params, jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), x))
    except (TypeError, ValueError) as err:
        if isinstance(err, JacobianTooLargeError) or "empty" in str(err):
            raise
        shapes = [tuple(jnp.shape(a)) for a in jax.tree_util.tree_leaves(x)]
        raise ValueError(
            f"sharded_spectrum_fn takes a batch (one spectrum per entry of x's leading axis), "
            f"and the model fails on one entry x[0] (input shapes {shapes} without their "
            f"first axis): for a single input pass x[None]; the model said: "
            f"{str(err).splitlines()[0]}") from None


def _key_arguments(key, mesh: Mesh):
    """(replicated key data, key implementation name) of a PRNG key; (None, None) for None."""
    if key is None:
        return None, None
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 PRNGKey
    return _place(jax.random.key_data(key), mesh, P()), str(jax.random.key_impl(key))


class ShardedSpectrumFunction:
    """What `sharded_spectrum_fn` returns: `sfn(params, x, key=None) -> spectra`.

    Attributes:
      mesh: the device mesh.
      engine: the engine's settings.
      program: the one compiled program, `program(*args, **static)` with
        `args, static = sfn.arguments(params, x, key)` (`program.lower(...)` for its HLO).
      trace_count: how many times `program` was traced.
    """

    def __init__(self, apply_fn: Callable, engine: Engine, mesh: Mesh, device_batch: int | None):
        if DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis to split the batch over, got "
                             f"axes {mesh.axis_names}; build it with isometry.device_mesh(data=..., "
                             f"model=...)")
        self.mesh = mesh
        self.device_batch = device_batch
        self.engine, self.trace_count = engine, 0
        self.single = spectrum_fn(apply_fn, engine=engine)
        # CPU devices: batched LAPACK calls deadlock there (module docstring)
        cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
        self.local = unbatch_lapack(self._per_device) if cpu else self._per_device
        self.program = jax.jit(self._program, static_argnames=("batch", "impl"), keep_unused=True)

    def _per_device(self, params, x, keys):  # one device's slice of the batch: its own loops
        if self.device_batch is None:
            return jax.vmap(self.single.program, in_axes=(None, 0, 0))(params, x, keys)
        return jax.lax.map(lambda a: self.single.program(params, *a), (x, keys),
                           batch_size=self.device_batch)

    def _program(self, params, x, key_data, batch: int, impl):
        self.trace_count += 1
        if key_data is None:  # as spectrum_fn(batched=True): PRNGKey(0) for every input
            keys = jax.vmap(lambda _: jax.random.key(0))(jnp.arange(batch))
        else:
            keys = jax.random.split(jax.random.wrap_key_data(key_data, impl=impl), batch)
        pad = -batch % self.mesh.shape[DATA_AXIS]
        if pad:  # repeat the last input; its spectra are dropped below
            x, keys = jax.tree_util.tree_map(
                lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), (x, keys))
        data = P(DATA_AXIS)
        x, keys = jax.lax.with_sharding_constraint((x, keys), NamedSharding(self.mesh, data))
        spec, counts = jax.shard_map(self.local, mesh=self.mesh, in_specs=(P(), data, data),
                                     out_specs=data, axis_names={DATA_AXIS},
                                     check_vma=False)(params, x, keys)
        if pad:
            spec, counts = jax.tree_util.tree_map(lambda a: a[:batch], (spec, counts))
        # replicated scalars: readable on every process
        return spec, jnp.sum(spec.n_nonfinite), jax.tree_util.tree_map(jnp.sum, counts)

    def arguments(self, params, x, key=None):
        """The program's arguments (global arrays on the mesh) and static settings."""
        check_floating(x)
        batch = batch_size(x, "sharded_spectrum_fn")
        _check_one_input(self.single, params, x)
        divides = batch % self.mesh.shape[DATA_AXIS] == 0
        params = _place(params, self.mesh, P())
        x = _place(x, self.mesh, P(DATA_AXIS) if divides else P())
        key_data, impl = _key_arguments(key, self.mesh)
        return (params, x, key_data), dict(batch=batch, impl=impl)

    def compile(self, params, x, key=None) -> Callable:
        """The program compiled ahead of time for the shapes of (params, x, key): `run(params,
        x, key=None)`, the same as calling `sfn` for arguments of those shapes."""
        args, static = self.arguments(params, x, key)
        compiled = self.program.lower(*args, **static).compile()
        return lambda params, x, key=None: self._finish(compiled(*self.arguments(params, x, key)[0]))

    def __call__(self, params, x, key=None):
        args, static = self.arguments(params, x, key)
        return self._finish(self.program(*args, **static))

    def _finish(self, outputs):
        """The spectra, after raising on NaN/Inf inputs, outputs or Jacobians."""
        spec, bad, counts = outputs
        raise_if_nonfinite_values(jax.tree_util.tree_map(
            lambda a: np.asarray(a.addressable_data(0)), counts))
        if int(np.asarray(bad.addressable_data(0))):
            raise_if_nonfinite(jax.tree_util.tree_map(np.asarray, to_host(spec)))
        return spec


# --- counting collectives in compiled HLO ----------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLEES = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)"
                      r"=%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
_OPCODE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_GROUPS = re.compile(r"replica_groups=(\[[\d,]*\]<=\[[\d,]*\](?:T\([\d,]*\))?|\{\{[\d,{}]*\}\}"
                     r"|mesh\[[^\]]*\]\s*\{[^}]*\})")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        if name is None:
            match = _COMPUTATION.match(line)
            if match:
                name = match.group(1)
                comps[name] = []
        elif line.strip() == "}":
            name = None
        else:
            comps[name].append(line)
    return comps


def collective_counts(hlo: str) -> dict[str, dict[str, int]]:
    """Collective instructions of compiled HLO text, in all and inside while-loop bodies.

    Args:
      hlo: `jitted.lower(...).compile().as_text()`.

    Returns:
      {"total": {opcode: n}, "in_loops": {opcode: n}, "while_loops": n, "loop_groups": [...]}:
      "in_loops" counts the instructions of every computation reachable from a while loop's
      body or condition (fusions, nested loops and calls included), once each;
      "loop_groups" lists the distinct `replica_groups` of those instructions as HLO writes
      them (e.g. "[2,4]<=[8]": two groups of four consecutive devices).
    """
    comps = _computations(hlo)
    callees = {}
    loop_roots = set()
    for name, lines in comps.items():
        found = set()
        for line in lines:
            for called, branches in _CALLEES.findall(line):
                found.update([called] if called else
                             [b.strip().lstrip("%") for b in branches.split(",")])
            if re.search(r"\swhile\(", line):
                loop_roots.update(re.findall(r"(?:body|condition)=%?([\w.\-]+)", line))
        callees[name] = found
    in_loops, stack = set(), list(loop_roots)
    while stack:
        name = stack.pop()
        if name in in_loops or name not in comps:
            continue
        in_loops.add(name)
        stack.extend(callees[name])

    def count(names):
        totals = dict.fromkeys(COLLECTIVES, 0)
        for name in names:
            for line in comps[name]:
                for opcode in _OPCODE.findall(line):
                    totals[opcode] += 1
        return totals

    groups = sorted({g for name in in_loops for line in comps[name] if _OPCODE.search(line)
                     for g in _GROUPS.findall(line)})
    return {"total": count(comps), "in_loops": count(in_loops), "while_loops": len(
        [1 for lines in comps.values() for line in lines if re.search(r"\swhile\(", line)]),
        "loop_groups": groups}
