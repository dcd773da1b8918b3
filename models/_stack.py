"""The shape every model in `models/` shares: embed → scanned stages of blocks → head.

    x_0 = embed(input);  x_{l+1} = block_l(x_l), l = 0..L−1;  output = head(x_L)

A run of identical blocks is data, not code: `Layers` keeps the parameters of its `depth`
blocks stacked on a leading layer axis (built once by `nnx.vmap` over split RNG streams) and
applies them with one `jax.lax.scan`, so tracing and compiling cost the same at 10,000 layers
as at 10. `Stack.states` returns x_0 … x_L stacked from the same scan, so the engine can take
∂x_l/∂x_0 at every depth (`isometry` never imports `models`; it calls these methods, the
`isometry.LayerStack` protocol).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# the attribute of `Layers` that holds the stacked block: a key of this name on a parameter
# path marks the leaf's leading axis as the layer axis (`isometry.alpha_values` reads it)
from isometry._stack import LAYER_AXIS_KEY

from isometry import theory

#: Activation functions by name: the one table of `isometry.theory.ACTIVATIONS`.
ACTIVATIONS = {name: act.fn for name, act in theory.ACTIVATIONS.items()}

#: Logical axis names of the models' parameters and the mesh axis each is sharded over by
#: default when a model gets `mesh=` (None: replicated). A tensor-parallel Transformer: the
#: attention heads (the packed q/k/v columns and the rows of the output projection), the
#: feed-forward hidden units and the vocabulary split over "model"; a fully connected net
#: splits the input side of every weight matrix over "model" (FSDP-style storage: each device
#: holds 1/M of every W, XLA computes partial products and sums them). The stacked layer axis
#: of a scanned `Layers` is "layers" (replicated by default: each device holds its slice of
#: every layer's W).
DEFAULT_SHARDING_RULES: dict[str, str | None] = {
    "layers": None,
    "embed": None,
    "heads": "model",
    "mlp": "model",
    "vocab": "model",
    "fc_in": "model",
    "fc_out": None,
}


class Partitioning:
    """Sharding rules of a model: logical parameter axes to mesh axes (`nnx.with_partitioning`).

    Built from a model's `mesh=` and `sharding_rules=` arguments. Without a mesh it changes
    nothing: initializers come back as they are and parameters carry no sharding metadata
    (the unsharded model of before, bit for bit). With a mesh every annotated initializer
    gets `nnx.with_partitioning(init, spec, mesh=mesh)`, so the parameter is created sharded
    (flax's eager sharding) and `nnx.get_partition_spec(nnx.state(model))` gives its
    `PartitionSpec`; rules naming a mesh axis the mesh lacks fall back to replication.

    Args:
      mesh: a `jax.sharding.Mesh` (e.g. `isometry.device_mesh(data=2, model=4)`), or None
        (then the mesh of an enclosing `models.sharded(mesh)` block, if any).
      rules: overrides of `DEFAULT_SHARDING_RULES`, logical name -> mesh axis or None.
    """

    _context: tuple = (None, None)  # (mesh, rules) of the innermost `sharded` block

    def __init__(self, mesh=None, rules: Mapping[str, str | None] | None = None):
        if mesh is None and rules is None:
            mesh, rules = Partitioning._context
        unknown = set(rules or {}) - set(DEFAULT_SHARDING_RULES)
        if unknown:
            raise ValueError(f"unknown logical axes {sorted(unknown)} in sharding_rules; use "
                             f"{sorted(DEFAULT_SHARDING_RULES)}")
        if rules and mesh is None:
            raise ValueError("sharding_rules need a mesh= to shard over")
        self.mesh = mesh
        merged = {**DEFAULT_SHARDING_RULES, **(rules or {})}
        axes = set(mesh.axis_names) if mesh is not None else set()
        self.rules = {name: (axis if axis in axes else None) for name, axis in merged.items()}

    @classmethod
    def given(cls, partitioning: "Partitioning | None") -> "Partitioning":
        """`partitioning`, or the default (the enclosing `sharded` block's, else none) for None."""
        return cls() if partitioning is None else partitioning

    @property
    def active(self) -> bool:
        return self.mesh is not None

    def spec(self, *names: str | None) -> tuple:
        """The mesh axes of logical axes `names` (None entries stay None)."""
        return tuple(None if n is None else self.rules[n] for n in names)

    def init(self, initializer: Callable, *names: str | None) -> Callable:
        """`initializer`, annotated with the mesh axes of `names` when there is a mesh."""
        if not self.active:
            return initializer
        return nnx.with_partitioning(initializer, self.spec(*names), mesh=self.mesh)

    def layer_metadata(self) -> dict[str, Any]:
        """`transform_metadata` of the `nnx.vmap` that stacks blocks: the layer axis' name."""
        return {nnx.PARTITION_NAME: self.rules["layers"]} if self.active else {}

    @staticmethod
    @contextlib.contextmanager
    def sharded(mesh, rules: Mapping[str, str | None] | None = None) -> Iterator[None]:
        """Models built inside the block without `mesh=` get this mesh (and rules).

        For code that builds models through builders it does not own (the command line):
        `with models.sharded(mesh): model = build(...)` equals passing `mesh=mesh`.
        """
        Partitioning(mesh, rules)  # validate
        previous = Partitioning._context
        Partitioning._context = (mesh, rules)
        try:
            yield
        finally:
            Partitioning._context = previous

    def layernorm(self, features: int, **kwargs) -> nnx.LayerNorm:
        """`nnx.LayerNorm(features)` with its scale and bias on the "embed" axis."""
        if self.active:
            kwargs.update(scale_init=self.init(nnx.initializers.ones_init(), "embed"),
                          bias_init=self.init(nnx.initializers.zeros_init(), "embed"))
        return LayerNorm(features, **kwargs)



def activation(name: str):
    """The activation function called `name` (clear error for an unknown one)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_variant(model: str, variant: str, allowed: tuple[str, ...]) -> str:
    """Returns `variant` or raises a ValueError that lists the allowed names."""
    if variant not in allowed:
        raise ValueError(f"unknown {model} variant {variant!r}; use one of {list(allowed)}")
    return variant


def check_alpha_init(model: str, variant: str, alpha_init: float, alpha_variants: tuple[str, ...]):
    """ValueError when a nonzero `alpha_init` is given to a variant that has no α (it would be
    ignored without a word)."""
    if alpha_init != 0 and variant not in alpha_variants:
        raise ValueError(f"alpha_init={alpha_init} does nothing for the {model} variant "
                         f"{variant!r}, which has no α; the variants with α are "
                         f"{list(alpha_variants)}")


def remat_policy(remat: bool | str):
    """The `jax.checkpoint` policy of a `remat=` setting (None: no rematerialization).

    True saves nothing inside a layer (recompute it on the backward pass: memory O(L·width)
    for the layer inputs only); a string names one of `jax.checkpoint_policies`.
    """
    if remat is False or remat is None:
        return None
    if remat is True:
        return jax.checkpoint_policies.nothing_saveable
    policy = getattr(jax.checkpoint_policies, str(remat), None)
    if policy is None:
        names = [n for n in dir(jax.checkpoint_policies) if not n.startswith("_")]
        raise ValueError(f"unknown remat policy {remat!r}; use True, False or one of {names}")
    return policy


def uniform_init(scale: float):
    """U(−scale, scale): PyTorch's `nn.Linear` default with scale 1/√fan_in, the authors'
    embedding initialization with scale 0.1.

    Example:
      >>> w = uniform_init(0.5)(jax.random.key(0), (1000,))
      >>> bool(jnp.all(jnp.abs(w) <= 0.5)), w.dtype
      (True, dtype('float32'))
    """

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class StandardPromotion:
    """Mixin: the module's call traced under standard dtype promotion.

    Flax's normalization layers take statistics at `jnp.promote_types(dtype, float32)`, which
    `jax_numpy_dtype_promotion="strict"` refuses for float64 inputs; the layers here compute
    exactly what flax's do, with that one promotion allowed.
    """

    def __call__(self, *args, **kwargs):
        with jax.numpy_dtype_promotion("standard"):
            return super().__call__(*args, **kwargs)


class LayerNorm(StandardPromotion, nnx.LayerNorm):
    """`nnx.LayerNorm` that also takes float64 inputs under strict dtype promotion."""


class BatchNorm(StandardPromotion, nnx.BatchNorm):
    """`nnx.BatchNorm` that also takes float64 inputs under strict dtype promotion."""


class Identity(nnx.Module):
    """x ↦ x: stands in for a normalization a variant does without."""

    def __call__(self, x):
        return x


class Layers(nnx.Module):
    """`depth` blocks of one kind, parameters stacked on a leading axis, applied by one scan.

        x_{l+1} = block_l(x_l, *args),  l = 0..depth−1,  block_l = the l-th slice of `layers`

    Every parameter of the block gains a leading axis of length `depth` (a scalar α becomes
    shape (depth,)). Dropout streams and BatchNorm statistics are stacked too and go through
    the scan: whatever a block changes (RNG counters, running averages) comes back stacked.

    Args:
      make_block: `rngs -> block`, called once under `nnx.vmap` with split RNG streams.
      depth: number of blocks (≥ 1).
      rngs: `nnx.Rngs` for initialization.
      remat: rematerialize each block on the backward pass (a `jax.checkpoint` policy on the
        scan body: True saves nothing, or a name from `jax.checkpoint_policies`); trades
        compute for the activations stored by backpropagation and `jax.linearize`.
      unroll: blocks per scan iteration (`jax.lax.scan`'s `unroll`), for step time on GPUs.
      partitioning: the model's `Partitioning`; with a mesh, the stacked leading axis is
        named "layers" in every parameter's sharding metadata (`nnx.vmap`'s
        `transform_metadata`), so `nnx.get_partition_spec` covers it.

    Example:
      >>> layers = Layers(lambda r: nnx.Linear(4, 4, rngs=r), 3, rngs=nnx.Rngs(0))
      >>> layers.layers.kernel.shape
      (3, 4, 4)
      >>> layers(jnp.ones(4)).shape, layers.states(jnp.ones(4)).shape
      ((4,), (3, 4))
    """

    def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, *,
                 rngs: nnx.Rngs, remat: bool | str = False, unroll: int = 1,
                 partitioning: Partitioning | None = None):
        if depth < 1:
            raise ValueError(f"a stack needs at least one block, got depth={depth}")
        remat_policy(remat)  # validate now, not at the first call
        if int(unroll) < 1:
            raise ValueError(f"unroll must be a positive number of blocks, got {unroll}")

        metadata = partitioning.layer_metadata() if partitioning is not None else {}

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, **(dict(transform_metadata=metadata) if metadata
                                                else {}))
        def build(rngs):
            return make_block(rngs)

        self.depth = depth
        self.remat = remat
        self.unroll = int(unroll)
        setattr(self, LAYER_AXIS_KEY, build(rngs))

    @property
    def stacked(self) -> nnx.Module:
        """The block whose every variable carries the leading layer axis."""
        return getattr(self, LAYER_AXIS_KEY)

    def layer(self, i: int) -> nnx.Module:
        """A copy of block i alone (its slice of every stacked variable): the loop reference."""
        graphdef, state = nnx.split(self.stacked)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

    def _scan(self, x, args: tuple, kwargs: dict, keep_states: bool):
        # A hand-written `jax.lax.scan` over nnx.split/merge, not `nnx.scan`: with flax's
        # default graph mode, `jax.jvp`/`jax.linearize` through `nnx.scan` fails ("Cannot
        # extract graph node from different trace level"), and every engine pushes tangents
        # through this scan. Splitting the graph once outside the JAX transform and merging
        # each layer's slice inside the body works under any outer trace and keeps the
        # program one scan, whatever the depth.
        graphdef, state = nnx.split(self.stacked)
        before, treedef = jax.tree.flatten(state)
        changed: list[int] = []

        def body(h, layer_state):
            ins = jax.tree.leaves(layer_state)  # before the call: merge shares the variables
            block = nnx.merge(graphdef, layer_state)
            y = block(h, *args, **kwargs)
            # carry back only what the block changed (BatchNorm in train mode, dropout RNGs)
            outs = jax.tree.leaves(nnx.state(block))
            changed[:] = [i for i, (a, b) in enumerate(zip(ins, outs)) if a is not b]
            return y, (tuple(outs[i] for i in changed), y if keep_states else None)

        policy = remat_policy(self.remat)
        if policy is not None:
            body = jax.checkpoint(body, policy=policy)
        x, (updates, ys) = jax.lax.scan(body, x, state, unroll=self.unroll)
        if changed:
            leaves = list(before)
            for i, value in zip(changed, updates):
                leaves[i] = value
            nnx.update(self.stacked, jax.tree.unflatten(treedef, leaves))
        return x, ys

    def __call__(self, x, *args, **kwargs):
        """x_depth from x_0 (extra arguments, e.g. a padding mask, go to every block)."""
        return self._scan(x, args, kwargs, keep_states=False)[0]

    def states(self, x, *args, **kwargs):
        """The stream after every block, stacked: shape (depth, *x.shape)."""
        return self._scan(x, args, kwargs, keep_states=True)[1]


def _stacked_runs(pieces: Sequence) -> jax.Array | tuple:
    """Joins (depth, …) pieces of equal trailing shape; one array, or a tuple of runs."""
    runs: list[list] = []
    for piece in pieces:
        if runs and runs[-1][-1].shape[1:] == piece.shape[1:]:
            runs[-1].append(piece)
        else:
            runs.append([piece])
    joined = tuple(jnp.concatenate(r, axis=0) if len(r) > 1 else r[0] for r in runs)
    return joined[0] if len(joined) == 1 else joined


class Stack(nnx.Module):
    """Base class of the models: embed → stages → head, each stage a block or a `Layers`.

    Subclasses implement `stack_stages()` (the blocks and scanned `Layers` in order) and may override
    `embed` and `head`. Extra call arguments (a Transformer's `padding_mask`) reach every block.
    """

    @classmethod
    def from_config(cls, config, **kwargs):
        """The model a configuration dataclass describes (`model.config` gives it back).

        Args:
          config: the model's frozen configuration (e.g. `models.FullyConnectedConfig`).
          **kwargs: `rngs=` and what is not architecture (`mesh=`, `sharding_rules=`).
        """
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                   **kwargs)

    def stack_stages(self) -> tuple:
        raise NotImplementedError

    def embed(self, x):
        return x

    def head(self, x):
        return x

    @property
    def num_blocks(self) -> int:
        """L, the number of blocks of the stack (scanned and not)."""
        return sum(s.depth if isinstance(s, Layers) else 1 for s in self.stack_stages())

    def unstacked_blocks(self) -> list:
        """Every block in depth order, one module each: the per-layer loop reference.

        Blocks of a scanned `Layers` come as copies of their slice (changing one does not
        change the model); `for b in model.unstacked_blocks(): x = b(x)` computes what
        `model.stack(x)` computes, as an explicit Python loop.
        """
        blocks = []
        for stage in self.stack_stages():
            if isinstance(stage, Layers):
                blocks.extend(stage.layer(i) for i in range(stage.depth))
            else:
                blocks.append(stage)
        return blocks

    def stack(self, x, *args, **kwargs):
        """The residual stack alone: x_0 ↦ x_L."""
        for stage in self.stack_stages():
            x = stage(x, *args, **kwargs)
        return x

    def states(self, x, *args, **kwargs):
        """x_0, x_1, …, x_L from x_0, stacked on a leading depth axis (one scan per stage).

        Returns one array of shape (L+1, *x.shape) when every block keeps the shape; a ResNet,
        whose stages change it, gives a tuple of such stacks, one per resolution, in order.
        """
        pieces = [x[None]]
        for stage in self.stack_stages():
            if isinstance(stage, Layers):
                ys = stage.states(x, *args, **kwargs)
                x = ys[-1]
                pieces.append(ys)
            else:
                x = stage(x, *args, **kwargs)
                pieces.append(x[None])
        return _stacked_runs(pieces)

    def hidden_states(self, x, *args, **kwargs):
        """`states` of the embedded input: x_0 = embed(x), …, x_L."""
        return self.states(self.embed(x), *args, **kwargs)

    def __call__(self, x, *args, **kwargs):
        return self.head(self.stack(self.embed(x), *args, **kwargs))
