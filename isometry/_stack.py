"""The contract between a layered model and the engine: `LayerStack`.

A model built as embed → blocks → head,

    x_0 = embed(input),   x_{l+1} = block_l(x_l),   output = head(x_L),

offers the engine more than its call: the stream x_0 … x_L at every depth, from which
`isometry` takes the Jacobians J_l = ∂x_l/∂x_0 (layer-by-layer spectra, the tracker's and the
training loop's spectrum target, `isometry spectrum --layerwise`). Every model in `models/`
follows it; a user's own model that does gets the same features. Nothing here imports
`models/`.

Runs of identical blocks keep their parameters stacked on a leading layer axis and are applied
by one scan (`models.Layers`), so `states` returns x_0 … x_L stacked, not a Python list: the
program's size does not grow with depth. A key named `LAYER_AXIS_KEY` ("layers") on a
parameter path marks the leading axis of that leaf as the layer axis (`alpha_values` names
every layer from it).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["LAYER_AXIS_KEY", "LayerStack"]

#: The key on a parameter path under which a scanned stack keeps its stacked block.
LAYER_AXIS_KEY = "layers"


@runtime_checkable
class LayerStack(Protocol):
    """What a layered model offers the engine (an `nnx.Module` with these methods).

    Methods:
      embed(x): the stream x_0 from an input.
      stack(x0, *args): the residual stack alone, x_0 ↦ x_L.
      states(x0, *args): x_0, x_1, …, x_L stacked on a leading depth axis, shape
        (L+1, *x0.shape) — or, when blocks change the shape (a ResNet's stages), a tuple of
        such stacks, one per run of equal shape, in depth order.
      head(xL): the output from x_L.
    """

    def embed(self, x: Any) -> Any: ...

    def stack(self, x0: Any, *args: Any) -> Any: ...

    def states(self, x0: Any, *args: Any) -> Any: ...

    def head(self, xL: Any) -> Any: ...
