"""The one way figures are written: `save(fig, path)`, atomically; `write_report` writes a
figure beside the JSON document it shows (and a markdown page), the outputs of an experiment
or a reporting command.

The library leaves matplotlib's backend to the user (a notebook keeps its inline backend);
without a display matplotlib falls back to a non-interactive one by itself, and the
`isometry` command selects Agg before it imports matplotlib.
"""

from __future__ import annotations

import io
import os

import matplotlib.pyplot as plt

from isometry._io import atomic_write, write_json

__all__ = ["save", "write_report", "plt"]


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


def write_report(out_dir: str | os.PathLike, name: str, record: dict, figure,
                 markdown: str | None = None) -> dict[str, str]:
    """Writes `out_dir`/NAME.png (`save`), NAME.json (strict JSON, `isometry._io`: NaN/Inf
    become null with the reason beside them) and, with `markdown`, NAME.md, each atomically and
    in this order (a figure that cannot be written leaves no document); `out_dir` is created
    if missing.

    Returns:
      {"json": path, "png": path} and "md": path with `markdown`.

    Example:
        >>> import tempfile
        >>> paths = write_report(tempfile.mkdtemp(), "r", {"chi": 1.0}, plt.figure(), "# r")
        >>> sorted(paths), open(paths["json"]).read().split()
        (['json', 'md', 'png'], ['{', '"chi":', '1.0', '}'])
    """
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(os.fspath(out_dir), name)
    paths = {"png": save(figure, base + ".png")}
    paths["json"] = write_json(base + ".json", record, indent=1)
    if markdown is not None:
        paths["md"] = atomic_write(base + ".md", markdown.encode())
    return paths
