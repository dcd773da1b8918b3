"""checkpoint.npz: the state after step k, written atomically, refused when it does not fit.

Format: arrays "step", "layout" (`PARAM_LAYOUT`), and "leaf_i" for the i-th leaf of the tree
(params, rest, opt_state) in pytree order; PRNG keys as "key_i" holding their key data.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from isometry._io import atomic_write
from isometry.train._config import OLD_LAYOUT, PARAM_LAYOUT, RunConfigError

__all__ = ["save_checkpoint", "load_checkpoint"]


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save_checkpoint(path: str, step: int, tree: Any) -> None:
    """Writes `tree`'s leaves and `step` to an .npz file atomically (format: module docstring)."""
    arrays = {"step": np.asarray(step, np.int64), "layout": np.asarray(PARAM_LAYOUT)}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        if _is_key(leaf):
            arrays[f"key_{i}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf_{i}"] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str, template: Any) -> tuple[int, Any]:
    """(step, tree) from `save_checkpoint`'s file; `template` gives the structure, shapes, dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        with zipfile.ZipFile(path) as archive:  # CRC of every array: a flipped bit is an error
            bad = archive.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"CRC check failed for {bad}")
        z = np.load(path)
        if "layout" not in z.files:
            raise RunConfigError(f"checkpoint {path!r} {OLD_LAYOUT}")
        if str(z["layout"]) != PARAM_LAYOUT:  # another layout's leaves: never load them
            raise RunConfigError(f"checkpoint {path!r} has parameter layout {str(z['layout'])!r}; "
                                 f"this isometry reads {PARAM_LAYOUT!r} only")
        step = int(z["step"])
        out = []
        for i, t in enumerate(leaves):
            if _is_key(t):
                out.append(jax.random.wrap_key_data(z[f"key_{i}"], impl=jax.random.key_impl(t)))
                continue
            a = z[f"leaf_{i}"]
            if a.shape != np.shape(t) or a.dtype != np.dtype(t.dtype):
                raise ValueError(f"leaf {i} is {a.dtype}{list(a.shape)}, the model needs "
                                 f"{np.dtype(t.dtype)}{list(np.shape(t))}")
            out.append(jnp.asarray(a))
        if len(z.files) != len(leaves) + 2:
            raise ValueError(f"it has {len(z.files) - 2} arrays, the model needs {len(leaves)}")
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise RunConfigError(f"checkpoint {path!r} is corrupt ({type(err).__name__}: {err}); the "
                             f"run cannot continue from it (nothing was changed)") from None
    except (KeyError, ValueError, OSError) as err:
        raise RunConfigError(f"checkpoint {path!r} does not match this model and optimizer: "
                             f"{err}") from None
    return step, jax.tree_util.tree_unflatten(treedef, out)
