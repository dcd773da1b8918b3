"""The one way figures are written: `save(fig, path)`, atomically.

The library leaves matplotlib's backend to the user (a notebook keeps its inline backend);
without a display matplotlib falls back to a non-interactive one by itself, and the
`isometry` command selects Agg before it imports matplotlib.
"""

from __future__ import annotations

import io
import os

import matplotlib.pyplot as plt

from isometry._io import atomic_write

__all__ = ["save", "plt"]


def save(fig, path: str | os.PathLike, dpi: int = 120) -> str:
    """Writes `fig` to `path` (format from the suffix, PNG without one) with
    `isometry._io.atomic_write`, closes it and returns the path.

    Example:
        >>> import tempfile
        >>> fig, ax = plt.subplots()
        >>> path = save(fig, os.path.join(tempfile.mkdtemp(), "empty.png"))
        >>> open(path, "rb").read(4) == b"\\x89PNG"
        True
    """
    path = os.fspath(path)
    fmt = (os.path.splitext(path)[1] or ".png")[1:]
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write(path, buf.getvalue())
